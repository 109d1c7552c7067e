//! The shared database's tables: the migrations that make them, each only adding, applied
//! under an advisory lock so that instances starting together do not race.

use super::{State, describe_pool};

/// The schema, in order; each step only adds, so that an older instance keeps working against
/// a newer schema during a rolling upgrade. Applied under a transaction-scoped advisory lock,
/// so that instances starting together do not race.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE cmqhook_claims (
    hook text NOT NULL,
    msg_id text NOT NULL,
    attempt integer NOT NULL,
    outcome text NOT NULL,
    instance text NOT NULL,
    owner_boot text NOT NULL,
    owner_host text NOT NULL,
    owner_pid integer NOT NULL,
    run_id bigint NOT NULL,
    lease_until timestamptz NOT NULL,
    ended_at timestamptz,
    exit_code integer,
    signal integer,
    duration_ms bigint,
    PRIMARY KEY (hook, msg_id)
);
CREATE INDEX cmqhook_claims_running ON cmqhook_claims (owner_boot) WHERE outcome = 'running';
CREATE INDEX cmqhook_claims_ended ON cmqhook_claims (ended_at);
CREATE TABLE cmqhook_runs (
    id bigserial PRIMARY KEY,
    instance text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL,
    hook text NOT NULL,
    msg_id text,
    request_id text,
    path text NOT NULL,
    topic text,
    subscription text,
    tags text NOT NULL,
    attempt integer NOT NULL,
    outcome text NOT NULL,
    exit_code integer,
    signal integer,
    duration_ms bigint,
    left_behind boolean,
    error text,
    stdout_tail text,
    stderr_tail text
);
CREATE INDEX cmqhook_runs_started ON cmqhook_runs (started_at);
CREATE INDEX cmqhook_runs_msg ON cmqhook_runs (msg_id);
CREATE TABLE cmqhook_pushes (
    id bigserial PRIMARY KEY,
    instance text NOT NULL,
    at timestamptz NOT NULL,
    status integer NOT NULL,
    reason text NOT NULL,
    msg_id text,
    request_id text,
    path text NOT NULL,
    topic text,
    subscription text,
    tags text NOT NULL
);
CREATE INDEX cmqhook_pushes_at ON cmqhook_pushes (at);
",
    r"
ALTER TABLE cmqhook_runs ADD COLUMN owner_boot text, ADD COLUMN run_id bigint;
CREATE UNIQUE INDEX cmqhook_runs_run ON cmqhook_runs (owner_boot, run_id);
",
    // `ack = "stored"`: one row per (hook, message id), with the bytes the hook reads and what
    // rebuilds its `CMQ_*` environment. `attempt` counts the runs started, `failures` those
    // that failed or timed out; `state` is `queued`, `waiting` (for `next_at`), `running`
    // (by its owner, under `lease_until`, renewed like a claim's), `done` or `dead`.
    r"
CREATE TABLE cmqhook_stored (
    hook text NOT NULL,
    msg_id text NOT NULL,
    state text NOT NULL,
    attempt integer NOT NULL,
    failures integer NOT NULL,
    next_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    last_outcome text,
    request_id text,
    path text,
    format text NOT NULL,
    topic text,
    subscription text,
    topic_owner text,
    publish_time text,
    tags text NOT NULL,
    body bytea,
    instance text,
    owner_boot text,
    owner_host text,
    owner_pid integer,
    run_id bigint,
    lease_until timestamptz,
    PRIMARY KEY (hook, msg_id)
);
CREATE INDEX cmqhook_stored_due ON cmqhook_stored (hook, next_at)
    WHERE state IN ('queued', 'waiting', 'running');
CREATE INDEX cmqhook_stored_updated ON cmqhook_stored (updated_at)
    WHERE state IN ('done', 'dead');
",
    // `keep_bodies`: the pushes that matched a hook, for `cmqhook replay`, with what rebuilds
    // their `CMQ_*` environment (`hooks`: the names that matched, a JSON array). And the replay
    // requests `cmqhook replay` records for whichever instance comes first: `pending`, then
    // `taken` (under `lease_until`, renewed like a claim's), then `done` with `answer`, the
    // replay's outcome as JSON lines.
    r"
CREATE TABLE cmqhook_bodies (
    id bigserial PRIMARY KEY,
    msg_id text NOT NULL,
    kept_at timestamptz NOT NULL,
    instance text NOT NULL,
    request_id text,
    path text NOT NULL,
    format text NOT NULL,
    topic text,
    subscription text,
    topic_owner text,
    publish_time text,
    tags text NOT NULL,
    hooks text NOT NULL,
    body bytea NOT NULL,
    envelope bytea
);
CREATE INDEX cmqhook_bodies_msg ON cmqhook_bodies (msg_id, id);
CREATE INDEX cmqhook_bodies_kept ON cmqhook_bodies (kept_at);
CREATE TABLE cmqhook_replays (
    id bigserial PRIMARY KEY,
    msg_id text NOT NULL,
    hook text,
    state text NOT NULL,
    requested_at timestamptz NOT NULL,
    instance text,
    owner_boot text,
    lease_until timestamptz,
    answer text
);
CREATE INDEX cmqhook_replays_open ON cmqhook_replays (id) WHERE state <> 'done';
",
    // A run's end that came after another instance had taken its message over (SPEC §8):
    // recorded, but the message's state is that instance's. NULL: written before this.
    r"
ALTER TABLE cmqhook_runs ADD COLUMN superseded boolean;
",
    // One state per (hook, message id), whatever the hook's `ack` (SPEC §5): the claims row is
    // it for stored messages too. Until now a stored message's state was only in
    // `cmqhook_stored`: each row becomes its claim's state where it is newer than the claim
    // (done: succeeded, dead: dead, else queued). Work running now keeps its owner and lease
    // (`running`), so that no instance takes it while its run goes on.
    r"
INSERT INTO cmqhook_claims AS c
    (hook, msg_id, attempt, outcome, instance, owner_boot, owner_host, owner_pid, run_id,
     lease_until, ended_at)
SELECT hook, msg_id, attempt,
       CASE state WHEN 'done' THEN 'succeeded' WHEN 'dead' THEN 'dead'
                  WHEN 'running' THEN 'running' ELSE 'queued' END,
       COALESCE(instance, ''), COALESCE(owner_boot, ''), COALESCE(owner_host, ''),
       COALESCE(owner_pid, 0), COALESCE(run_id, 0), COALESCE(lease_until, updated_at),
       CASE WHEN state = 'running' THEN NULL ELSE updated_at END
FROM cmqhook_stored
ON CONFLICT (hook, msg_id) DO UPDATE SET
    attempt = GREATEST(c.attempt, EXCLUDED.attempt), outcome = EXCLUDED.outcome,
    instance = EXCLUDED.instance, owner_boot = EXCLUDED.owner_boot,
    owner_host = EXCLUDED.owner_host, owner_pid = EXCLUDED.owner_pid,
    run_id = EXCLUDED.run_id, lease_until = EXCLUDED.lease_until,
    ended_at = EXCLUDED.ended_at, exit_code = NULL, signal = NULL, duration_ms = NULL
WHERE c.outcome <> 'running'
  AND COALESCE(c.ended_at, '-infinity') <= COALESCE(EXCLUDED.ended_at, 'infinity');
",
    // Runs of `cmqhook replay` are marked.
    r"
ALTER TABLE cmqhook_runs ADD COLUMN replay boolean NOT NULL DEFAULT false;
",
    // Each run keeps its output (SPEC §10): head and tail, lines marked with their stream.
    r"
ALTER TABLE cmqhook_runs ADD COLUMN output text;
",
];

impl State {
    pub(super) async fn migrate(&self) -> Result<(), String> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|err| format!("journal unreachable: {}", describe_pool(&err)))?;
        let unreachable = |err: tokio_postgres::Error| format!("journal unreachable: {err}");
        let transaction = client.transaction().await.map_err(unreachable)?;
        transaction
            .batch_execute(
                "SELECT pg_advisory_xact_lock(hashtext('cmqhook schema'));
                 CREATE TABLE IF NOT EXISTS cmqhook_meta (key text PRIMARY KEY, value text NOT NULL);",
            )
            .await
            .map_err(unreachable)?;
        let version: usize = transaction
            .query_opt("SELECT value FROM cmqhook_meta WHERE key = 'version'", &[])
            .await
            .map_err(unreachable)?
            .and_then(|row| row.get::<_, String>(0).parse().ok())
            .unwrap_or(0);
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            transaction
                .batch_execute(migration)
                .await
                .map_err(unreachable)?;
            transaction
                .execute(
                    "INSERT INTO cmqhook_meta (key, value) VALUES ('version', $1)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&(index + 1).to_string()],
                )
                .await
                .map_err(unreachable)?;
        }
        transaction.commit().await.map_err(unreachable)
    }
}
