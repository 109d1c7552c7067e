//! What `cmqhook replay` (SPEC §9) needs from the shared database besides what it reads
//! (`history.rs`: kept bodies, a stored message's state): a claim for a replay (taken even
//! after a success), and the replay requests that `cmqhook replay` records for whichever
//! `serve` of the fleet comes first, with the answer that `serve` writes back.

use std::time::{Duration, Instant};

use super::{
    Acquired, CLI_TIMEOUT, JournalError, Postgres, RETRY_EVERY, State, describe, parse_url, seconds,
};

/// How often `cmqhook replay` looks at its request.
const REQUEST_POLL: Duration = Duration::from_millis(100);

/// A replay request a `serve` took: run it, then [`Postgres::answer_replay`].
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub id: i64,
    pub msg_id: String,
    pub hook: Option<String>,
}

/// What became of a request of `cmqhook replay`.
#[derive(Debug)]
pub enum Requested {
    /// A `serve` ran it: its answer, as JSON lines.
    Answered(String),
    /// No `serve` took it in time; it is withdrawn (none will).
    NotTaken,
}

impl Postgres {
    /// Claims (`hook`, `msg_id`) for a replay as `run_id`: as [`Postgres::acquire`], but a
    /// success is taken too, and the attempt is the one after every run journaled.
    pub async fn acquire_again(&self, hook: &str, msg_id: &str, run_id: i64) -> Acquired {
        let (hook, msg_id) = (hook.to_owned(), msg_id.to_owned());
        self.on_runtime(async move |state| Ok(state.acquire_again(&hook, &msg_id, run_id).await))
            .await
            .unwrap_or_else(Acquired::Unavailable)
    }

    /// Takes the oldest replay request no instance took yet, under this instance's lease.
    pub async fn take_replay(&self) -> Result<Option<ReplayRequest>, String> {
        self.on_runtime(async move |state| state.take_replay().await)
            .await
    }

    /// Writes the answer of the replay request `id`, trying again while the database is away.
    pub async fn answer_replay(&self, id: i64, answer: String) -> Result<(), String> {
        self.on_runtime(async move |state| {
            let mut tries = 0;
            loop {
                let written = state
                    .execute(
                        "UPDATE cmqhook_replays SET state = 'done', answer = $2, lease_until = NULL
                         WHERE id = $1",
                        &[&id, &answer],
                    )
                    .await;
                match written {
                    Ok(_) => return Ok(()),
                    Err(err) if tries >= 40 => return Err(err),
                    Err(_) => tries += 1,
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
        })
        .await
    }
}

impl State {
    async fn acquire_again(&self, hook: &str, msg_id: &str, run_id: i64) -> Acquired {
        if let Err(reason) = self.health() {
            return Acquired::Unavailable(reason);
        }
        self.take_over(hook, msg_id, run_id, Duration::ZERO, true)
            .await
    }

    async fn take_replay(&self) -> Result<Option<ReplayRequest>, String> {
        self.health()?;
        let rows = self
            .query(
                "UPDATE cmqhook_replays
                 SET state = 'taken', instance = $1, owner_boot = $2,
                     lease_until = now() + $3::float8 * interval '1 second'
                 WHERE id = (SELECT id FROM cmqhook_replays WHERE state = 'pending'
                             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, msg_id, hook",
                &[&self.owner.instance, &self.owner.boot, &seconds(self.lease)],
            )
            .await?;
        Ok(rows.first().map(|row| ReplayRequest {
            id: row.get(0),
            msg_id: row.get(1),
            hook: row.get(2),
        }))
    }
}

/// `cmqhook replay` with a shared database: records a request to replay `msg_id` (through
/// `hook`, if given) for whichever `serve` comes first, and waits for its answer. A request
/// that no `serve` took within `take_within` is withdrawn: [`Requested::NotTaken`]. `taken`
/// hears which instance took it (once, as soon as that is seen).
pub fn request_replay(
    url: &str,
    msg_id: &str,
    hook: Option<&str>,
    take_within: Duration,
    taken: impl Fn(&str),
) -> Result<Requested, JournalError> {
    let failed = |reason: String| JournalError::Postgres { reason };
    let (config, tls) = parse_url(url).map_err(failed)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| failed(format!("cannot start its runtime: {err}")))?;
    runtime.block_on(async {
        let (client, connection) = bounded(config.connect(tls)).await?;
        tokio::spawn(connection);
        let client = &client;
        let query = async |sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]| {
            bounded(client.query(sql, params)).await
        };
        // No serve ever used this schema version: none can take the request.
        let exists: bool = query("SELECT to_regclass('cmqhook_replays') IS NOT NULL", &[])
            .await?[0]
            .get(0);
        if !exists {
            return Ok(Requested::NotTaken);
        }
        let id: i64 = query(
            "INSERT INTO cmqhook_replays (msg_id, hook, state, requested_at)
             VALUES ($1, $2, 'pending', now()) RETURNING id",
            &[&msg_id, &hook],
        )
        .await?[0]
            .get(0);
        let asked = Instant::now();
        let mut said_taken = false;
        loop {
            let rows = query(
                "SELECT state, COALESCE(instance, ''), lease_until < now(), answer
                 FROM cmqhook_replays WHERE id = $1",
                &[&id],
            )
            .await?;
            let Some(row) = rows.first() else {
                return Err(failed(
                    "the replay request was removed from the journal before it was answered"
                        .to_owned(),
                ));
            };
            let state: String = row.get(0);
            let instance: String = row.get(1);
            match state.as_str() {
                "done" => {
                    if !said_taken {
                        taken(&instance);
                    }
                    return Ok(Requested::Answered(
                        row.get::<_, Option<String>>(3).unwrap_or_default(),
                    ));
                }
                "pending" if asked.elapsed() >= take_within => {
                    let withdrawn = query(
                        "DELETE FROM cmqhook_replays WHERE id = $1 AND state = 'pending'
                         RETURNING id",
                        &[&id],
                    )
                    .await?;
                    if !withdrawn.is_empty() {
                        return Ok(Requested::NotTaken);
                    }
                    // Taken just now: wait for it.
                }
                "taken" => {
                    if !said_taken {
                        taken(&instance);
                        said_taken = true;
                    }
                    if row.get::<_, Option<bool>>(2) == Some(true) {
                        return Err(failed(format!(
                            "instance `{instance}` took the replay and stopped renewing it; its outcome is unknown: see `cmqhook history --msg-id {msg_id}`"
                        )));
                    }
                }
                _ => {}
            }
            tokio::time::sleep(REQUEST_POLL).await;
        }
    })
}

/// A statement of `cmqhook replay`, bounded: a database that accepts connections and then says
/// nothing must not hang the command.
async fn bounded<T>(
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, JournalError> {
    match tokio::time::timeout(CLI_TIMEOUT, statement).await {
        Ok(result) => result.map_err(|err| JournalError::Postgres {
            reason: format!("journal unreachable: {}", describe(&err)),
        }),
        Err(_) => Err(JournalError::Postgres {
            reason: "journal unreachable: no answer in time".to_owned(),
        }),
    }
}
