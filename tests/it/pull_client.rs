//! The queue client (`cmqhook::pull::QueueClient`) against the stand-in over real HTTP on
//! 127.0.0.1: what it signs is accepted by a server that checks signatures as documented, a
//! wrong one is refused, and each answer and fault reaches the caller as its type.

use std::time::{Duration, Instant};

use cmqhook::config::{Queue, SignatureMethod};
use cmqhook::pull::{ErrorKind, QueueClient, QueueError, Received};

use crate::harness::{Dir, both, cmqhook, config, post, text, wait_for};
use crate::standin::{Fault, SECRET_ID, SECRET_KEY, StandIn};

const QUEUE: &str = "deploys";
/// Long enough that nothing reappears while a test looks; short enough to wait out.
const VISIBILITY: Duration = Duration::from_millis(1500);

fn queue(standin: &StandIn) -> Queue {
    Queue {
        name: QUEUE.to_owned(),
        endpoint: standin.endpoint(),
        secret_id: SECRET_ID.to_owned(),
        secret_key: SECRET_KEY.to_owned(),
        token: None,
        signature: SignatureMethod::HmacSha256,
        wait: Duration::from_secs(1),
        batch: 16,
        pollers: 1,
    }
}

fn standin() -> StandIn {
    let standin = StandIn::start();
    standin.create_queue(QUEUE, VISIBILITY);
    standin
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

fn receive(client: &QueueClient, max: usize, wait: u64) -> Result<Vec<Received>, QueueError> {
    block_on(client.receive(QUEUE, max, Duration::from_secs(wait)))
}

#[test]
fn a_message_sent_is_received_once_with_its_tags_and_deleted_by_its_handle() {
    let standin = standin();
    let client = QueueClient::new(&queue(&standin));
    let tags = ["web".to_owned(), "all".to_owned()];
    let body = "deploy v1.2 & more = \"quoted\" +plus é\nline two";
    let id = block_on(client.send(QUEUE, body, &tags)).expect("sent");
    assert_eq!(standin.bodies(QUEUE), [body]);
    assert_eq!(standin.tags(QUEUE, &id), Some(tags.to_vec()));
    let received = receive(&client, 16, 0).expect("received");
    let [message] = received.as_slice() else {
        panic!("{received:?}")
    };
    assert_eq!(
        (message.msg_id.as_str(), message.body.as_str()),
        (id.as_str(), body)
    );
    assert_eq!(message.tags, tags);
    assert_eq!(message.dequeue_count, Some(1));
    assert!(
        message.next_visible_time >= message.enqueue_time,
        "{message:?}"
    );
    // Hidden now: a second receive finds nothing.
    assert_eq!(receive(&client, 16, 0).expect("an empty poll"), []);
    assert_eq!(standin.invisible(QUEUE), 1);
    let failed = block_on(client.delete(QUEUE, std::slice::from_ref(&message.receipt_handle)));
    assert_eq!(failed.expect("deleted"), []);
    assert_eq!(standin.deleted(QUEUE), [id]);
    assert_eq!(standin.visible(QUEUE) + standin.invisible(QUEUE), 0);
}

#[test]
fn a_wrong_secret_key_is_an_auth_error_until_the_key_is_right() {
    let standin = standin();
    standin.send(QUEUE, "m", &[]);
    let mut wrong = queue(&standin);
    wrong.secret_key = "not-the-key".to_owned();
    let client = QueueClient::new(&wrong);
    let err = receive(&client, 16, 0).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert_eq!(err.code(), Some(4100));
    assert!(
        err.to_string().contains("signature does not match"),
        "{err}"
    );
    // Nothing was received by the refused request.
    assert_eq!(standin.visible(QUEUE), 1);
    let requests = standin.requests_of("BatchReceiveMessage");
    assert_eq!(requests.iter().map(|r| r.code).collect::<Vec<_>>(), [4100]);
    // The server's side of "fixed": it now takes that key.
    standin.set_key(SECRET_ID, "not-the-key");
    assert_eq!(receive(&client, 16, 0).expect("received").len(), 1);
}

#[test]
fn check_accepts_the_standin_queue_table_and_shows_the_queue_without_its_key() {
    let standin = standin();
    let dir = Dir::new();
    let written = format!(
        "{}\n{}",
        config("", "[hooks.h]\ncommand = \"true\"\n"),
        standin.queue_table(QUEUE, "batch = 4")
    );
    let file = dir.write_config(&written);
    let output = cmqhook(&["check", "-c", &file.display().to_string()], b"");
    assert!(output.status.success(), "{}", both(&output));
    let line = format!(
        "queue {QUEUE}  {}  HmacSHA256, wait 1s, batch 4, pollers 1",
        standin.endpoint()
    );
    assert!(text(&output.stdout).contains(&line), "{}", both(&output));
    assert!(!both(&output).contains(SECRET_KEY), "{}", both(&output));
}

#[test]
fn a_request_changed_after_signing_is_refused() {
    let standin = standin();
    standin.send(QUEUE, "m", &[]);
    let client = QueueClient::new(&queue(&standin));
    block_on(client.send(QUEUE, "signed body", &[])).expect("sent");
    let sent = standin.requests_of("SendMessage").remove(0);
    // The same request again, as the client signed it, is accepted (the stand-in does not
    // refuse a replay); with its body changed, it is not.
    for (body, code) in [("signed body", 0), ("changed body", 4100)] {
        let mut params = sent.params.clone();
        params.insert("msgBody".to_owned(), body.to_owned());
        let form: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        let host = standin.addr().to_string();
        let response = post(
            standin.addr(),
            "/v2/index.php",
            &[
                ("Host", host.as_str()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            form.as_bytes(),
        );
        assert_eq!(response.json()["code"], code, "{body}: {}", response.text());
    }
}

#[test]
fn hmac_sha1_and_a_session_token_are_accepted() {
    let standin = standin();
    standin.require_token(Some("session-token"));
    let mut config = queue(&standin);
    config.signature = SignatureMethod::HmacSha1;
    let err = block_on(QueueClient::new(&config).send(QUEUE, "m", &[])).expect_err("no token");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    config.token = Some("session-token".to_owned());
    block_on(QueueClient::new(&config).send(QUEUE, "m", &[])).expect("signed with HmacSHA1");
    let sent = standin.requests_of("SendMessage").pop().expect("a request");
    assert_eq!(sent.params["SignatureMethod"], "HmacSHA1");
    assert_eq!(sent.params["Token"], "session-token");
}

#[test]
fn a_message_not_deleted_reappears_and_only_its_newest_handle_deletes_it() {
    let standin = standin();
    let client = QueueClient::new(&queue(&standin));
    let id = standin.send(QUEUE, "again", &[]);
    let first = receive(&client, 1, 0).expect("received").remove(0);
    assert_eq!(first.dequeue_count, Some(1));
    // Long polling: the receive waits for the message to become visible again.
    let second = receive(&client, 1, 5).expect("received again").remove(0);
    assert_eq!(
        (second.msg_id.as_str(), second.dequeue_count),
        (id.as_str(), Some(2))
    );
    assert_eq!(
        standin.handles(QUEUE, &id),
        [first.receipt_handle.clone(), second.receipt_handle.clone()]
    );
    assert_eq!(standin.dequeue_count(QUEUE, &id), 2);
    let handles = [first.receipt_handle.clone(), second.receipt_handle.clone()];
    let failed = block_on(client.delete(QUEUE, &handles)).expect("a batch delete");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].receipt_handle, first.receipt_handle);
    assert_eq!(failed[0].kind(), ErrorKind::InvalidHandle);
    assert_eq!(standin.deleted(QUEUE), [id]);
}

#[test]
fn an_expired_handle_does_not_delete() {
    let standin = standin();
    let client = QueueClient::new(&queue(&standin));
    standin.send(QUEUE, "slow", &[]);
    let message = receive(&client, 1, 0).expect("received").remove(0);
    assert!(
        wait_for(VISIBILITY * 4, || standin.visible(QUEUE) == 1),
        "the message did not become visible again"
    );
    let failed = block_on(client.delete(QUEUE, &[message.receipt_handle])).expect("answered");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (failed[0].kind(), failed[0].code),
        (ErrorKind::InvalidHandle, 4430)
    );
    assert_eq!(standin.deleted(QUEUE), Vec::<String>::new());
}

#[test]
fn an_empty_poll_waits_and_a_message_sent_meanwhile_ends_it() {
    let standin = standin();
    let client = QueueClient::new(&queue(&standin));
    let started = Instant::now();
    assert_eq!(receive(&client, 16, 1).expect("an empty poll"), []);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(standin.requests_of("BatchReceiveMessage")[0].code, 7000);

    std::thread::scope(|scope| {
        let polling = scope.spawn(|| {
            let started = Instant::now();
            (receive(&client, 16, 20), started.elapsed())
        });
        assert!(
            wait_for(Duration::from_secs(10), || standin.polling() == 1),
            "the second poll did not arrive"
        );
        standin.send(QUEUE, "late", &[]);
        let (received, took) = polling.join().expect("the poll does not panic");
        assert_eq!(received.expect("received")[0].body, "late");
        assert!(took < Duration::from_secs(20), "{took:?}");
    });
}

#[test]
fn faults_reach_the_caller_as_their_kind() {
    let standin = standin();
    let client = QueueClient::new(&queue(&standin));
    standin.send(QUEUE, "m", &[]);
    for (fault, kind) in [
        (Fault::throttled(), ErrorKind::Throttled),
        (
            Fault::Code(6070, "(10690)too many unacknowledged".to_owned()),
            ErrorKind::TooManyUnacknowledged,
        ),
        (Fault::auth(), ErrorKind::Auth),
        (Fault::Drop, ErrorKind::Network),
        (Fault::Status(502), ErrorKind::Network),
        (Fault::Code(5000, "internal".to_owned()), ErrorKind::Api),
    ] {
        standin.inject(Some("BatchReceiveMessage"), fault.clone(), 1);
        let err = receive(&client, 16, 0).expect_err("a fault");
        assert_eq!(err.kind(), kind, "{fault:?}: {err}");
    }
    // Each fault was used once; the message is still there for the next receive.
    assert_eq!(standin.faults_left(), 0);
    assert_eq!(receive(&client, 16, 0).expect("received").len(), 1);
}

#[test]
fn a_server_that_is_down_is_a_network_error_until_it_is_up() {
    let mut standin = standin();
    let client = QueueClient::new(&queue(&standin));
    standin.down();
    let err = block_on(client.send(QUEUE, "m", &[])).expect_err("down");
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    standin.up();
    block_on(client.send(QUEUE, "m", &[])).expect("up again");
}

#[test]
fn more_than_sixteen_handles_are_deleted_in_batches_of_sixteen() {
    let standin = standin();
    let client = QueueClient::new(&queue(&standin));
    for n in 0..20 {
        standin.send(QUEUE, &format!("m{n}"), &[]);
    }
    let mut handles = Vec::new();
    while handles.len() < 20 {
        let received = receive(&client, 16, 0).expect("received");
        assert!(!received.is_empty(), "only {} received", handles.len());
        handles.extend(received.into_iter().map(|m| m.receipt_handle));
    }
    assert_eq!(
        block_on(client.delete(QUEUE, &handles)).expect("deleted"),
        []
    );
    assert_eq!(standin.deleted(QUEUE).len(), 20);
    let batches = standin.requests_of("BatchDeleteMessage");
    let sizes: Vec<usize> = batches
        .iter()
        .map(|r| {
            r.params
                .keys()
                .filter(|k| k.starts_with("receiptHandle."))
                .count()
        })
        .collect();
    assert_eq!(sizes, [16, 4]);
}
