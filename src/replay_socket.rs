//! The replay socket (SPEC §9): `serve` owns the claims of (hook, message id), so
//! `cmqhook replay`, finding the SQLite journal locked by a `serve`, asks it to run the replay
//! through this Unix socket beside the journal (`FILE.replay.sock`, mode 0600) and waits for
//! the outcome.
//!
//! The exchange: the client sends one JSON line, [`Request`]; the server answers one JSON
//! line, [`Reply`], per hook (its result, or why it was not replayed), or a single line saying
//! that no body is kept or why nothing could be done, then closes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::dispatch::{Dispatcher, Reply};

/// The longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client tries to connect to a `serve` that holds the journal but has not bound
/// its socket yet (it binds it right after taking the lock).
const CONNECT_WAIT: Duration = Duration::from_secs(3);
const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// The replay socket of the journal `journal`.
pub fn path_of(journal: &Path) -> PathBuf {
    let mut path = journal.as_os_str().to_owned();
    path.push(".replay.sock");
    PathBuf::from(path)
}

/// What `cmqhook replay` asks.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub msg_id: String,
    pub hook: Option<String>,
}

/// `serve`'s bound replay socket; its file is removed when it is dropped.
pub struct Socket {
    path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
}

/// Binds the replay socket of `journal`, whose lock this process holds: a socket file left
/// there is a dead `serve`'s (the lock proves it), and is replaced.
pub fn bind(journal: &Path) -> std::io::Result<Socket> {
    let path = path_of(journal);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed the replay socket a previous serve left")
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let socket = Socket {
        path,
        listener: Some(listener),
    };
    // Only the owner may ask for runs (the journal's directory should be private too).
    std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o600))?;
    Ok(socket)
}

impl Socket {
    /// Answers replay requests with `dispatcher` until the runtime stops; each connection is a
    /// task of its own. Call within a tokio runtime, once.
    pub fn serve(&mut self, dispatcher: Arc<Dispatcher>) -> std::io::Result<()> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(answer(stream, Arc::clone(&dispatcher)));
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "replay socket: cannot accept");
                        tokio::time::sleep(CONNECT_RETRY).await;
                    }
                }
            }
        });
        Ok(())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How long a client has to send its request line.
const REQUEST_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// One replay request: read it, run it, write each line of the answer. Only a process of
/// this serve's own user may ask (the socket's mode is set just after it is bound, so the
/// peer is checked too), and it has [`REQUEST_WITHIN`] to say what it wants.
async fn answer(stream: tokio::net::UnixStream, dispatcher: Arc<Dispatcher>) {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self").map(|own| own.uid());
    match stream.peer_cred() {
        Ok(peer) if own.as_ref().is_ok_and(|own| peer.uid() == *own) => {}
        Ok(peer) => {
            tracing::warn!(
                uid = peer.uid(),
                "replay socket: a request from another user is refused"
            );
            return;
        }
        Err(err) => {
            tracing::warn!(error = %err, "replay socket: cannot tell who asks; refused");
            return;
        }
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_WITHIN,
        tokio::io::BufReader::new(read.take(MAX_REQUEST)).read_line(&mut line),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("no request in time")));
    let replies = match read
        .map_err(|err| err.to_string())
        .and_then(|_| serde_json::from_str::<Request>(&line).map_err(|err| err.to_string()))
    {
        Err(err) => vec![Reply::refusal(format!("bad replay request: {err}"))],
        Ok(request) => {
            tracing::info!(
                msg_id = request.msg_id,
                hook = request.hook,
                "replay requested"
            );
            dispatcher
                .replay_message(&request.msg_id, request.hook.as_deref())
                .await
                .replies()
        }
    };
    for reply in replies {
        let mut text = serde_json::to_string(&reply).expect("a reply serializes");
        text.push('\n');
        if let Err(err) = write.write_all(text.as_bytes()).await {
            tracing::warn!(error = %err, "replay socket: the client left before the outcome");
            return;
        }
    }
    let _ = write.shutdown().await;
}

/// Why asking a `serve` failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot ask the serve through {}: {source}", path.display())]
pub struct AskError {
    path: PathBuf,
    source: std::io::Error,
}

/// Asks the `serve` that holds `journal` to run `request`, and waits for its answer, line by
/// line, until it closes.
pub fn ask(journal: &Path, request: &Request) -> Result<Vec<Reply>, AskError> {
    let path = path_of(journal);
    let failed = |source| AskError {
        path: path.clone(),
        source,
    };
    let started = std::time::Instant::now();
    let mut stream = loop {
        match UnixStream::connect(&path) {
            Ok(stream) => break stream,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && started.elapsed() < CONNECT_WAIT =>
            {
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(err) => return Err(failed(err)),
        }
    };
    let mut text = serde_json::to_string(request).expect("a request serializes");
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(failed)?;
    let mut replies = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(failed)?;
        let reply = serde_json::from_str(&line)
            .map_err(|err| failed(std::io::Error::new(std::io::ErrorKind::InvalidData, err)))?;
        replies.push(reply);
    }
    Ok(replies)
}
