//! A real client against the stand-in, and against cmqhook: the PyPI package
//! `abmn-qcloud-cmq-sdk-py3` (a Python 3 port of Tencent's CMQ SDK) sends, receives, batch
//! receives, deletes and batch deletes on the stand-in, signing with HmacSHA1 and HmacSHA256;
//! it receives a message that `cmqhook queue send` published, and cmqhook's client receives
//! one the SDK published. So the stand-in's signature check and answers are the SDK's, and
//! cmqhook's requests are what the stand-in (hence the SDK's server) takes.
//!
//! Needs `python3` with the package (`.ci/run` installs it); without them the test fails.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use cmqhook::config::{Queue, SignatureMethod};
use cmqhook::pull::QueueClient;
use serde_json::Value;

use crate::harness::{Dir, both, cmqhook_command, config, output_of, text};
use crate::standin::{SECRET_ID, SECRET_KEY, StandIn};

const QUEUE: &str = "pyq";

/// Prints one JSON object a step.
const SCRIPT: &str = r#"
import json, os
from cmq.account import Account
from cmq.queue import Message
from cmq.cmq_exception import CMQServerException

endpoint, secret_id, secret_key, name = (
    os.environ[k] for k in ("ENDPOINT", "SECRET_ID", "SECRET_KEY", "QUEUE"))

def out(**step):
    print(json.dumps(step), flush=True)

def queue(sign, key=secret_key):
    account = Account(endpoint, secret_id, key)
    account.set_sign(sign)
    return account.get_queue(name)

q = queue("sha1")
m = q.receive_message(polling_wait_seconds=1)
out(step="from-cmqhook", id=m.msgId, body=m.msgBody, dequeue=m.dequeueCount)
q.delete_message(m.receiptHandle)

q = queue("sha256")
m = q.send_message(Message("single"))
got = q.receive_message(polling_wait_seconds=0)
out(step="single", sent=m.msgId, id=got.msgId, body=got.msgBody)
q.delete_message(got.receiptHandle)

ids = [q.send_message(Message("batch %d" % n)).msgId for n in range(3)]
got = q.batch_receive_message(3, 1)
out(step="batch", sent=ids, ids=[m.msgId for m in got], bodies=[m.msgBody for m in got],
    dequeues=[m.dequeueCount for m in got])
q.batch_delete_message([m.receiptHandle for m in got])

try:
    q.receive_message(polling_wait_seconds=0)
    out(step="empty", code=0)
except CMQServerException as e:
    out(step="empty", code=e.code)

try:
    queue("sha256", key="not-the-key").send_message(Message("refused"))
    out(step="wrong-key", code=0)
except CMQServerException as e:
    out(step="wrong-key", code=e.code)

m = q.send_message(Message("to cmqhook"))
out(step="to-cmqhook", id=m.msgId)
"#;

#[test]
#[ignore = "needs python3 and abmn-qcloud-cmq-sdk-py3"]
fn the_python_sdk_and_cmqhook_talk_to_the_standin_and_to_each_other() {
    let standin = StandIn::start();
    standin.create_queue(QUEUE, Duration::from_secs(30));
    let dir = Dir::new();
    let text_config = format!(
        "{}\n{}",
        config("", "[hooks.h]\ncommand = \"true\"\n"),
        standin.queue_table(QUEUE, "")
    );
    let file = dir.write_config(&text_config);
    let sent = output_of(
        cmqhook_command(&[
            "queue",
            "send",
            "-c",
            &file.display().to_string(),
            "--queue",
            QUEUE,
        ]),
        "from cmqhook ✓".as_bytes(),
    );
    assert!(sent.status.success(), "{}", both(&sent));
    let from_cmqhook = text(&sent.stdout).trim().to_owned();

    let output = output_of(
        {
            let mut python = Command::new("python3");
            python
                .args(["-c", SCRIPT])
                .env("ENDPOINT", standin.endpoint())
                .env("SECRET_ID", SECRET_ID)
                .env("SECRET_KEY", SECRET_KEY)
                .env("QUEUE", QUEUE);
            python
        },
        b"",
    );
    assert!(
        output.status.success(),
        "python3 with abmn-qcloud-cmq-sdk-py3 (`pip install abmn-qcloud-cmq-sdk-py3`):\n{}",
        both(&output)
    );
    let steps: HashMap<String, Value> = text(&output.stdout)
        .lines()
        .map(|line| {
            let step: Value = serde_json::from_str(line).expect("a JSON line");
            (step["step"].as_str().expect("a step").to_owned(), step)
        })
        .collect();
    let step = |name: &str| {
        steps
            .get(name)
            .unwrap_or_else(|| panic!("no step {name}:\n{}", both(&output)))
    };
    let first = step("from-cmqhook");
    assert_eq!(first["id"], from_cmqhook.as_str());
    assert_eq!(first["body"], "from cmqhook ✓");
    assert_eq!(first["dequeue"], 1);
    let single = step("single");
    assert_eq!(single["id"], single["sent"]);
    assert_eq!(single["body"], "single");
    let batch = step("batch");
    assert_eq!(batch["ids"], batch["sent"]);
    assert_eq!(
        batch["bodies"],
        serde_json::json!(["batch 0", "batch 1", "batch 2"])
    );
    assert_eq!(batch["dequeues"], serde_json::json!([1, 1, 1]));
    assert_eq!(step("empty")["code"], 7000);
    assert_eq!(step("wrong-key")["code"], 4100);

    // What the SDK published, cmqhook's client receives and deletes.
    let to_cmqhook = step("to-cmqhook")["id"].as_str().expect("an id").to_owned();
    let client = QueueClient::new(&Queue {
        name: QUEUE.to_owned(),
        endpoint: standin.endpoint(),
        secret_id: SECRET_ID.to_owned(),
        secret_key: SECRET_KEY.to_owned(),
        token: None,
        signature: SignatureMethod::HmacSha256,
        wait: Duration::from_secs(1),
        batch: 16,
        pollers: 1,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let received = runtime
        .block_on(client.receive(QUEUE, 16, Duration::from_secs(1)))
        .expect("received");
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        (received[0].msg_id.as_str(), received[0].body.as_str()),
        (to_cmqhook.as_str(), "to cmqhook")
    );
    let failed = runtime
        .block_on(client.delete(QUEUE, &[received[0].receipt_handle.clone()]))
        .expect("deleted");
    assert_eq!(failed, []);

    // Everything the SDK asked was answered 0, but the empty poll and the wrong key.
    let deleted = standin.deleted(QUEUE);
    assert_eq!(deleted.len(), 6, "{deleted:?}");
    assert_eq!(deleted.first(), Some(&from_cmqhook));
    assert_eq!(deleted.last(), Some(&to_cmqhook));
    let codes: Vec<(String, i64)> = standin
        .requests()
        .into_iter()
        .filter(|request| request.code != 0)
        .map(|request| (request.action, request.code))
        .collect();
    assert_eq!(
        codes,
        [
            ("ReceiveMessage".to_owned(), 7000),
            ("SendMessage".to_owned(), 4100)
        ]
    );
    let sha1 = standin
        .requests()
        .into_iter()
        .filter(|request| {
            request.params.get("SignatureMethod").map(String::as_str) == Some("HmacSHA1")
        })
        .count();
    assert_eq!(sha1, 2, "the SDK's HmacSHA1 receive and delete");
}
