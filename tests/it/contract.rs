//! The port traits' contract, one suite run against both sets of adapters: the embedded
//! ones (SQLite and files) and the AWS ones over the AWS wire protocol (moto server). What
//! the core relies on — conditional writes, all-or-nothing transactions with per-item
//! reasons, visibility timeouts, receive counts, redrive, range reads, mapping limits,
//! the services' size limits (`ports::limits`: refused with the same error, nothing
//! written) — must hold the same on both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestration::local::{FileBlobs, SqliteJobStore, SqliteMappings, SqliteQueues};
use orchestration::ports::{
    limits, Attributes, BlobError, Blobs, Condition, DeadLetter, JobStore, Key, MappingConfig,
    MappingError, Mappings, Measure, OutgoingMessage, Oversize, ProvisionedPollers, QueueError,
    QueueSpec, Queues, ReceivedMessage, StoreError, TxOp,
};
use serde_json::{json, Value};

use crate::moto;

struct Ports {
    store: Arc<dyn JobStore>,
    queues: Arc<dyn Queues>,
    blobs: Arc<dyn Blobs>,
    mappings: Arc<dyn Mappings>,
    /// Unique per run, so suites sharing an emulator never see each other's resources.
    prefix: String,
    _dir: Option<tempfile::TempDir>,
}

fn embedded() -> Ports {
    let dir = tempfile::tempdir().unwrap();
    Ports {
        store: Arc::new(SqliteJobStore::open(&dir.path().join("store.db")).unwrap()),
        queues: Arc::new(SqliteQueues::open(&dir.path().join("queues.db")).unwrap()),
        blobs: Arc::new(FileBlobs::open(dir.path().join("blobs")).unwrap()),
        mappings: Arc::new(SqliteMappings::open(&dir.path().join("mappings.db")).unwrap()),
        prefix: "c".into(),
        _dir: Some(dir),
    }
}

async fn aws(test: &str) -> Ports {
    let d = moto::deployment(test).await;
    Ports {
        store: d.ports.store.clone(),
        queues: d.ports.queues.clone(),
        blobs: d.ports.blobs.clone(),
        mappings: d.ports.mappings.clone(),
        prefix: d.settings.prefix.clone(),
        _dir: None,
    }
}

fn attrs(v: Value) -> Attributes {
    v.as_object().cloned().unwrap()
}

/// Polls `probe` until it holds: a hang guard for what an emulator does asynchronously.
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- JobStore

async fn store_contract(p: &Ports) {
    let store = p.store.as_ref();
    let key = Key::new(format!("{}#job", p.prefix), "job");
    assert!(store.get(&key).await.unwrap().is_none());

    // Conditions on a missing item.
    for condition in [
        Condition::Exists,
        Condition::VersionIs(0),
        Condition::VersionIs(1),
    ] {
        assert!(
            matches!(
                store.put(&key, Attributes::new(), condition).await,
                Err(StoreError::ConditionFailed(k)) if k == key
            ),
            "{condition:?} on a missing item"
        );
    }
    let doc = json!({
        "s": "text", "empty": "", "i": 42, "neg": -7, "big": 1_u64 << 60, "f": 0.25,
        "b": false, "n": null, "l": [1, "two", [3], {"four": 4}], "m": {"k": {"deep": [true]}}
    });
    assert_eq!(
        store
            .put(&key, attrs(doc.clone()), Condition::NotExists)
            .await
            .unwrap(),
        1
    );
    let item = store.get(&key).await.unwrap().unwrap();
    assert_eq!((item.version, Value::Object(item.attrs)), (1, doc));
    assert!(matches!(
        store
            .put(&key, Attributes::new(), Condition::NotExists)
            .await,
        Err(StoreError::ConditionFailed(_))
    ));
    // Optimistic locking: the version moves on every write; a stale writer fails.
    assert_eq!(
        store
            .put(&key, attrs(json!({"x": 1})), Condition::VersionIs(1))
            .await
            .unwrap(),
        2
    );
    assert!(matches!(
        store
            .put(&key, attrs(json!({"x": 9})), Condition::VersionIs(1))
            .await,
        Err(StoreError::ConditionFailed(_))
    ));
    assert_eq!(
        store
            .put(&key, attrs(json!({"x": 2})), Condition::Exists)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .put(&key, attrs(json!({"x": 3})), Condition::Always)
            .await
            .unwrap(),
        4
    );
    let item = store.get(&key).await.unwrap().unwrap();
    // A put replaces the attributes whole.
    assert_eq!(
        (item.version, Value::Object(item.attrs)),
        (4, json!({"x": 3}))
    );
    let other = Key::new(format!("{}#job", p.prefix), "other");
    assert_eq!(
        store
            .put(&other, Attributes::new(), Condition::Always)
            .await
            .unwrap(),
        1
    );

    // Deletes.
    assert!(matches!(
        store.delete(&key, Condition::VersionIs(3)).await,
        Err(StoreError::ConditionFailed(_))
    ));
    store.delete(&key, Condition::VersionIs(4)).await.unwrap();
    assert!(store.get(&key).await.unwrap().is_none());
    store.delete(&key, Condition::Always).await.unwrap();
    assert!(matches!(
        store.delete(&key, Condition::Exists).await,
        Err(StoreError::ConditionFailed(_))
    ));

    // Transactions: all or nothing, with the failed conditions named by position.
    let pk = format!("{}#run", p.prefix);
    let k = |sk: &str| Key::new(pk.clone(), sk);
    store
        .put(&k("p#1"), Attributes::new(), Condition::NotExists)
        .await
        .unwrap();
    let ops = vec![
        TxOp::Put {
            key: k("p#0"),
            attrs: Attributes::new(),
            condition: Condition::NotExists,
        },
        TxOp::Put {
            key: k("p#1"),
            attrs: Attributes::new(),
            condition: Condition::NotExists,
        },
        TxOp::Put {
            key: k("agg"),
            attrs: attrs(json!({"n": 1})),
            condition: Condition::NotExists,
        },
    ];
    match store.transact(ops).await {
        Err(StoreError::TransactionCanceled { failed }) => {
            assert_eq!(failed, vec![false, true, false])
        }
        other => panic!("expected a cancelled transaction, got {other:?}"),
    }
    assert!(
        store.get(&k("p#0")).await.unwrap().is_none(),
        "nothing was written"
    );
    assert!(
        store.get(&k("agg")).await.unwrap().is_none(),
        "nothing was written"
    );
    store
        .transact(vec![
            TxOp::Put {
                key: k("p#0"),
                attrs: Attributes::new(),
                condition: Condition::NotExists,
            },
            TxOp::Put {
                key: k("agg"),
                attrs: attrs(json!({"n": 1})),
                condition: Condition::NotExists,
            },
            TxOp::Check {
                key: k("p#1"),
                condition: Condition::VersionIs(1),
            },
            TxOp::Delete {
                key: k("gone"),
                condition: Condition::Always,
            },
        ])
        .await
        .unwrap();
    let agg = store.get(&k("agg")).await.unwrap().unwrap();
    assert_eq!((agg.version, agg.attrs["n"].clone()), (1, json!(1)));
    store
        .transact(vec![
            TxOp::Put {
                key: k("agg"),
                attrs: attrs(json!({"n": 2})),
                condition: Condition::VersionIs(1),
            },
            TxOp::Delete {
                key: k("p#1"),
                condition: Condition::Exists,
            },
        ])
        .await
        .unwrap();
    assert_eq!(store.get(&k("agg")).await.unwrap().unwrap().version, 2);
    assert!(store.get(&k("p#1")).await.unwrap().is_none());
    match store
        .transact(vec![TxOp::Check {
            key: k("p#1"),
            condition: Condition::Exists,
        }])
        .await
    {
        Err(StoreError::TransactionCanceled { failed }) => assert_eq!(failed, vec![true]),
        other => panic!("expected a failed check, got {other:?}"),
    }
    // Requests the service would refuse.
    assert!(matches!(
        store.transact(Vec::new()).await,
        Err(StoreError::Invalid(_))
    ));
    let twice = vec![
        TxOp::Check {
            key: k("p#0"),
            condition: Condition::Exists,
        },
        TxOp::Delete {
            key: k("p#0"),
            condition: Condition::Always,
        },
    ];
    assert!(matches!(
        store.transact(twice).await,
        Err(StoreError::Invalid(_))
    ));

    // Queries: by prefix, in sort-key order, paginated.
    let list = format!("{}#list", p.prefix);
    for i in (0..7).rev() {
        store
            .put(
                &Key::new(&list, format!("a#{i:02}")),
                attrs(json!({"i": i})),
                Condition::NotExists,
            )
            .await
            .unwrap();
    }
    store
        .put(
            &Key::new(&list, "b#00"),
            Attributes::new(),
            Condition::NotExists,
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.query(&list, "a#", after.as_deref(), 3).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|i| i.attrs["i"].as_i64().unwrap()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 10, "pagination never ends");
    }
    assert_eq!(seen, (0..7).collect::<Vec<_>>());
    let all = store.query(&list, "", None, 100).await.unwrap();
    assert_eq!(all.items.len(), 8);
    assert!(all.next.is_none());
    assert!(store
        .query(&list, "z", None, 10)
        .await
        .unwrap()
        .items
        .is_empty());

    assert!(matches!(
        store.query(&list, "", None, 0).await,
        Err(StoreError::Invalid(_))
    ));

    // Concurrent conditional creates of one key: exactly one wins.
    let race = Key::new(format!("{}#race", p.prefix), "job");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = p.store.clone();
        let race = race.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put(&race, attrs(json!({"writer": i})), Condition::NotExists)
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(1) => wins += 1,
            Ok(v) => panic!("a create returned version {v}"),
            Err(StoreError::ConditionFailed(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(wins, 1);
}

/// `{"s": "x" * len}`.
fn padded(len: usize) -> Attributes {
    attrs(json!({ "s": "x".repeat(len) }))
}

fn too_large(what: impl Into<String>, size: usize, limit: usize, measure: Measure) -> Oversize {
    Oversize {
        what: what.into(),
        size: size as u64,
        limit: limit as u64,
        measure,
    }
}

async fn store_limits_contract(p: &Ports) {
    let store = p.store.as_ref();
    let pk = format!("{}#limits", p.prefix);
    let k = |sk: &str| Key::new(pk.clone(), sk);
    let exists = |sk: &'static str| {
        let key = k(sk);
        async move { store.get(&key).await.unwrap().is_some() }
    };

    // An item over 400 KB (as DynamoDB counts it, stored as {pk, sk, v, a}): refused, new or
    // replacing, and the item is as it was.
    let big = padded(limits::MAX_ITEM_BYTES);
    let size = limits::item_size(&k("big"), limits::WRITE_VERSION, &big);
    let expected = too_large(format!("item {pk}/big"), size, 400_000, Measure::Bytes);
    match store
        .put(&k("big"), big.clone(), Condition::NotExists)
        .await
    {
        Err(StoreError::TooLarge(o)) => assert_eq!(o, expected),
        other => panic!("an oversized item was not refused: {other:?}"),
    }
    assert!(!exists("big").await, "nothing was written");
    store
        .put(&k("big"), padded(10), Condition::NotExists)
        .await
        .unwrap();
    match store
        .put(&k("big"), big.clone(), Condition::VersionIs(1))
        .await
    {
        Err(StoreError::TooLarge(o)) => assert_eq!(o, expected),
        other => panic!("an oversized replacement was not refused: {other:?}"),
    }
    let kept = store.get(&k("big")).await.unwrap().unwrap();
    assert_eq!((kept.version, kept.attrs), (1, padded(10)));
    // Exactly at the limit is fine.
    let at_limit = padded(limits::MAX_ITEM_BYTES - (size - limits::MAX_ITEM_BYTES));
    assert_eq!(
        limits::item_size(&k("big"), limits::WRITE_VERSION, &at_limit),
        limits::MAX_ITEM_BYTES
    );
    store
        .put(&k("big"), at_limit, Condition::VersionIs(1))
        .await
        .unwrap();

    // Transactions over 100 items, over 4 MB, or with an item over 400 KB: refused whole.
    let put = |sk: String, attrs: Attributes| TxOp::Put {
        key: k(&sk),
        attrs,
        condition: Condition::NotExists,
    };
    let many: Vec<TxOp> = (0..101)
        .map(|i| put(format!("many#{i:03}"), Attributes::new()))
        .collect();
    match store.transact(many).await {
        Err(StoreError::TooLarge(o)) => {
            assert_eq!(o, too_large("transaction", 101, 100, Measure::Items))
        }
        other => panic!("101 items were not refused: {other:?}"),
    }
    let heavy: Vec<TxOp> = (0..11)
        .map(|i| put(format!("heavy#{i:02}"), padded(390_000)))
        .collect();
    let bytes: usize = heavy
        .iter()
        .map(|op| match op {
            TxOp::Put { key, attrs, .. } => limits::item_size(key, limits::WRITE_VERSION, attrs),
            _ => 0,
        })
        .sum();
    match store.transact(heavy).await {
        Err(StoreError::TooLarge(o)) => {
            assert_eq!(
                o,
                too_large("transaction", bytes, 4_000_000, Measure::Bytes)
            )
        }
        other => panic!("a transaction over 4 MB was not refused: {other:?}"),
    }
    let one_big = vec![
        put("mixed#small".into(), padded(10)),
        put("mixed#big".into(), big.clone()),
    ];
    match store.transact(one_big).await {
        Err(StoreError::TooLarge(o)) => assert_eq!(o.what, format!("item {pk}/mixed#big")),
        other => panic!("an oversized item in a transaction was not refused: {other:?}"),
    }
    let written = store.query(&pk, "", None, 1000).await.unwrap();
    let keys: Vec<&str> = written.items.iter().map(|i| i.key.sk.as_str()).collect();
    assert_eq!(keys, ["big"], "a refused transaction wrote nothing");

    // Query pages hold at most 1 MB of items (three of ~300 KB), whatever the limit; the
    // item that would pass it starts the next page.
    let pages_pk = format!("{}#pages", p.prefix);
    for i in 0..8 {
        store
            .put(
                &Key::new(&pages_pk, format!("i#{i}")),
                padded(300_000),
                Condition::NotExists,
            )
            .await
            .unwrap();
    }
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .query(&pages_pk, "i#", after.as_deref(), 100)
            .await
            .unwrap();
        sizes.push(page.items.len());
        seen.extend(page.items.into_iter().map(|i| i.key.sk));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(sizes.len() < 10, "pagination never ends");
    }
    assert_eq!(sizes, [3, 3, 2]);
    assert_eq!(seen, (0..8).map(|i| format!("i#{i}")).collect::<Vec<_>>());
}

// ---------------------------------------------------------------- Queues

/// Receives until `n` messages came (SQS returns what it has, not all at once).
async fn receive_all(q: &dyn Queues, url: &str, n: usize) -> Vec<ReceivedMessage> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n {
        got.extend(
            q.receive(url, 15, Duration::from_millis(100), None)
                .await
                .unwrap(),
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "messages missing"
        );
    }
    got
}

async fn queues_contract(p: &Ports) {
    let q = p.queues.as_ref();
    let name = |s: &str| format!("{}-{s}", p.prefix);
    let dlq = q
        .create_queue(&QueueSpec {
            name: name("dlq"),
            visibility_timeout: Duration::from_secs(30),
            dead_letter: None,
        })
        .await
        .unwrap();
    let spec = QueueSpec {
        name: name("work"),
        visibility_timeout: Duration::from_secs(30),
        dead_letter: Some(DeadLetter {
            queue_url: dlq.clone(),
            max_receive_count: 2,
        }),
    };
    let url = q.create_queue(&spec).await.unwrap();
    assert_eq!(
        q.create_queue(&spec).await.unwrap(),
        url,
        "create is idempotent"
    );
    assert_eq!(q.queue_url(&name("work")).await.unwrap(), Some(url.clone()));
    assert_eq!(q.queue_url(&name("nope")).await.unwrap(), None);
    let listed = q.list_queues(&p.prefix).await.unwrap();
    assert!(listed.contains(&url) && listed.contains(&dlq), "{listed:?}");

    // More than one service batch in a call, in and out.
    let bodies: Vec<String> = (0..23).map(|i| format!("m{i}")).collect();
    q.send(&url, bodies.iter().map(OutgoingMessage::new).collect())
        .await
        .unwrap();
    let got = receive_all(q, &url, bodies.len()).await;
    let mut received: Vec<String> = got.iter().map(|m| m.body.clone()).collect();
    received.sort();
    let mut expected = bodies.clone();
    expected.sort();
    assert_eq!(received, expected);
    assert!(got.iter().all(|m| m.receive_count == 1 && m.sent_ms > 0));
    let counts = q.counts(&url).await.unwrap();
    assert_eq!((counts.visible, counts.in_flight), (0, 23));
    q.delete(&url, got.iter().map(|m| m.receipt_handle.clone()).collect())
        .await
        .unwrap();
    eventually("deleted messages leave the counts", || async {
        q.counts(&url).await.unwrap().in_flight == 0
    })
    .await;

    // Visibility: a message received with a zero timeout is visible again at once, with its
    // receive count up; after max_receive_count receives it moves to the DLQ.
    q.send(&url, vec![OutgoingMessage::new("poison")])
        .await
        .unwrap();
    let first = q
        .receive(&url, 1, Duration::from_secs(1), Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let second = q
        .receive(&url, 1, Duration::from_secs(1), Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(
        (second[0].message_id.clone(), second[0].receive_count),
        (first[0].message_id.clone(), 2)
    );
    let mut dead = Vec::new();
    let start = Instant::now();
    while dead.is_empty() {
        assert!(
            q.receive(&url, 1, Duration::ZERO, Some(Duration::ZERO))
                .await
                .unwrap()
                .is_empty(),
            "a message received max_receive_count times is redriven, not delivered"
        );
        dead = q
            .receive(&dlq, 10, Duration::from_millis(200), None)
            .await
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never dead-lettered"
        );
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "poison");

    // A stale receipt (the message was received again since) is not an error; whether it
    // deletes the message is the service's choice (SQS documents both).
    q.send(&url, vec![OutgoingMessage::new("twice")])
        .await
        .unwrap();
    let old = q
        .receive(&url, 1, Duration::from_secs(1), Some(Duration::ZERO))
        .await
        .unwrap();
    let new = q
        .receive(&url, 1, Duration::from_secs(1), None)
        .await
        .unwrap();
    assert_eq!((old.len(), new.len()), (1, 1));
    q.delete(&url, vec![old[0].receipt_handle.clone()])
        .await
        .unwrap();
    q.delete(&url, vec![new[0].receipt_handle.clone()])
        .await
        .unwrap();
    q.delete(&url, vec![new[0].receipt_handle.clone()])
        .await
        .unwrap();

    // change_visibility hides and shows again.
    q.send(&url, vec![OutgoingMessage::new("later")])
        .await
        .unwrap();
    let m = q
        .receive(&url, 1, Duration::from_secs(1), None)
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    assert!(q
        .receive(&url, 1, Duration::ZERO, None)
        .await
        .unwrap()
        .is_empty());
    q.change_visibility_batch(&url, &[m[0].receipt_handle.clone()], Duration::ZERO)
        .await
        .unwrap();
    let again = q
        .receive(&url, 1, Duration::from_secs(1), None)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body, "later");
    q.change_visibility(&url, &again[0].receipt_handle, Duration::from_secs(60))
        .await
        .unwrap();
    q.delete(&url, vec![again[0].receipt_handle.clone()])
        .await
        .unwrap();

    // Delays: a delayed message is counted as delayed, then delivered.
    q.send(
        &url,
        vec![OutgoingMessage {
            body: "delayed".into(),
            delay: Duration::from_secs(1),
        }],
    )
    .await
    .unwrap();
    let counts = q.counts(&url).await.unwrap();
    assert_eq!(counts.visible + counts.delayed, 1);
    let start = Instant::now();
    loop {
        let m = q
            .receive(&url, 1, Duration::from_millis(500), None)
            .await
            .unwrap();
        if let Some(m) = m.first() {
            assert_eq!(m.body, "delayed");
            assert!(
                start.elapsed() >= Duration::from_millis(500),
                "delivered before its delay"
            );
            q.delete(&url, vec![m.receipt_handle.clone()])
                .await
                .unwrap();
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "delayed message never came"
        );
    }

    // Oversized messages are refused before anything is sent, whatever the batch split.
    let huge = "x".repeat(limits::MAX_MESSAGE_BYTES + 1);
    let mut batch: Vec<OutgoingMessage> = (0..12).map(|_| OutgoingMessage::new("small")).collect();
    batch.push(OutgoingMessage::new(huge));
    match q.send(&url, batch).await {
        Err(QueueError::TooLarge(o)) => assert_eq!(
            o,
            too_large(
                "message body",
                limits::MAX_MESSAGE_BYTES + 1,
                256 * 1024,
                Measure::Bytes
            )
        ),
        other => panic!("an oversized message was not refused: {other:?}"),
    }
    // At the limit is fine (a batch of its own).
    q.send(
        &url,
        vec![
            OutgoingMessage::new("x".repeat(limits::MAX_MESSAGE_BYTES)),
            OutgoingMessage::new("x".repeat(limits::MAX_MESSAGE_BYTES)),
        ],
    )
    .await
    .unwrap();
    let full = receive_all(q, &url, 2).await;
    assert!(full
        .iter()
        .all(|m| m.body.len() == limits::MAX_MESSAGE_BYTES));
    q.delete(
        &url,
        full.iter().map(|m| m.receipt_handle.clone()).collect(),
    )
    .await
    .unwrap();
    assert!(q
        .receive(&url, 10, Duration::ZERO, None)
        .await
        .unwrap()
        .is_empty());

    // A deleted queue is gone: deleting again is fine, using it is NoSuchQueue.
    q.delete_queue(&url).await.unwrap();
    q.delete_queue(&url).await.unwrap();
    assert!(matches!(
        q.send(&url, vec![OutgoingMessage::new("x")]).await,
        Err(QueueError::NoSuchQueue(_))
    ));
    assert!(matches!(
        q.receive(&url, 1, Duration::ZERO, None).await,
        Err(QueueError::NoSuchQueue(_))
    ));
    assert_eq!(q.queue_url(&name("work")).await.unwrap(), None);
    q.delete_queue(&dlq).await.unwrap();
}

// ---------------------------------------------------------------- Blobs

async fn blobs_contract(p: &Ports) {
    let b = p.blobs.as_ref();
    let k = |s: &str| format!("{}/{s}", p.prefix);
    assert_eq!(b.get(&k("missing")).await.unwrap(), None);
    b.put(&k("d/b.txt"), b"bee".to_vec()).await.unwrap();
    b.put(&k("d/a.txt"), b"0123456789".to_vec()).await.unwrap();
    b.put(&k("e/c.txt"), Vec::new()).await.unwrap();
    assert_eq!(
        b.get(&k("d/a.txt")).await.unwrap().as_deref(),
        Some(&b"0123456789"[..])
    );
    assert_eq!(
        b.get(&k("e/c.txt")).await.unwrap().as_deref(),
        Some(&b""[..])
    );
    // Overwrite.
    b.put(&k("d/b.txt"), b"bee2".to_vec()).await.unwrap();
    assert_eq!(
        b.get(&k("d/b.txt")).await.unwrap().as_deref(),
        Some(&b"bee2"[..])
    );
    // Create-once.
    b.put_if_absent(&k("once"), b"1".to_vec()).await.unwrap();
    assert!(matches!(
        b.put_if_absent(&k("once"), b"2".to_vec()).await,
        Err(BlobError::AlreadyExists(_))
    ));
    assert_eq!(b.get(&k("once")).await.unwrap().as_deref(), Some(&b"1"[..]));
    // Listing: sorted, by prefix, with sizes.
    assert_eq!(
        b.list(&k("d/")).await.unwrap(),
        vec![k("d/a.txt"), k("d/b.txt")]
    );
    let sizes = b.list_sizes(&k("")).await.unwrap();
    let sizes: Vec<(String, u64)> = sizes.into_iter().map(|s| (s.key, s.size)).collect();
    assert_eq!(
        sizes,
        vec![
            (k("d/a.txt"), 10),
            (k("d/b.txt"), 4),
            (k("e/c.txt"), 0),
            (k("once"), 1)
        ]
    );
    // Range reads.
    assert_eq!(
        b.get_range(&k("d/a.txt"), 2, 5).await.unwrap().as_deref(),
        Some(&b"234"[..])
    );
    assert_eq!(
        b.get_range(&k("d/a.txt"), 8, 100).await.unwrap().as_deref(),
        Some(&b"89"[..])
    );
    assert_eq!(
        b.get_range(&k("d/a.txt"), 10, 20).await.unwrap().as_deref(),
        Some(&b""[..])
    );
    assert_eq!(
        b.get_range(&k("d/a.txt"), 50, 60).await.unwrap().as_deref(),
        Some(&b""[..])
    );
    assert_eq!(b.get_range(&k("nope"), 0, 5).await.unwrap(), None);
    // Deletes, of present and absent keys.
    b.delete(&k("d/b.txt")).await.unwrap();
    b.delete(&k("d/b.txt")).await.unwrap();
    assert_eq!(b.get(&k("d/b.txt")).await.unwrap(), None);
    assert_eq!(b.list(&k("d/")).await.unwrap(), vec![k("d/a.txt")]);
    // Invalid keys.
    assert!(matches!(
        b.put("", b"x".to_vec()).await,
        Err(BlobError::InvalidKey(_))
    ));
    assert!(matches!(b.get("/abs").await, Err(BlobError::InvalidKey(_))));
    // Keys over 1,024 bytes of UTF-8: refused, nothing written.
    let long = k(&"é".repeat(1024 / 2));
    let expected = too_large("object key", long.len(), 1024, Measure::Bytes);
    for result in [
        b.put(&long, b"x".to_vec()).await,
        b.put_if_absent(&long, b"x".to_vec()).await,
        b.get(&long).await.map(drop),
        b.delete(&long).await,
    ] {
        match result {
            Err(BlobError::TooLarge(o)) => assert_eq!(o, expected),
            other => panic!("a key of {} bytes was accepted: {other:?}", long.len()),
        }
    }
    // Exactly 1,024 bytes, in components short enough for any file system.
    let mut fits = format!("{}/", p.prefix);
    while fits.len() < 1024 {
        let slash = fits.len() % 100 == 99 && !fits.ends_with('/');
        fits.push(if slash { '/' } else { 'k' });
    }
    b.put(&fits, b"x".to_vec()).await.unwrap();
    assert_eq!(b.get(&fits).await.unwrap().as_deref(), Some(&b"x"[..]));
    b.delete(&fits).await.unwrap();
    assert!(b
        .list(&k(""))
        .await
        .unwrap()
        .iter()
        .all(|key| key.len() <= 1024));
}

// ---------------------------------------------------------------- Mappings

fn config(batch_size: u32, window: u32, max_concurrency: u32) -> MappingConfig {
    MappingConfig {
        batch_size,
        batching_window_secs: window,
        max_concurrency: Some(max_concurrency),
        provisioned_pollers: None,
        enabled: true,
    }
}

async fn mappings_contract(p: &Ports) {
    let m = p.mappings.as_ref();
    let queue = p
        .queues
        .create_queue(&QueueSpec {
            name: format!("{}-mapped", p.prefix),
            visibility_timeout: Duration::from_secs(30),
            dead_letter: None,
        })
        .await
        .unwrap();
    // What AWS rejects (and the emulator would accept) is refused here.
    for bad in [
        config(10, 0, 1),
        config(10, 0, 1001),
        config(11, 0, 2),
        config(10, 301, 2),
    ] {
        assert!(
            matches!(
                m.create_mapping(&queue, "source", bad, BTreeMap::new())
                    .await,
                Err(MappingError::Invalid(_))
            ),
            "{bad:?} was accepted"
        );
    }
    assert!(
        m.list_mappings(Some(&queue)).await.unwrap().is_empty(),
        "a refused create made a mapping"
    );
    let tags = BTreeMap::from([
        ("sluice:job".to_owned(), "j".to_owned()),
        ("sluice:stage".to_owned(), "feed".to_owned()),
    ]);
    let created = m
        .create_mapping(&queue, "source", config(100, 1, 5), tags.clone())
        .await
        .unwrap();
    assert_eq!(
        (created.queue_url.as_str(), created.function.as_str()),
        (queue.as_str(), "source")
    );
    assert_eq!(created.config, config(100, 1, 5));
    assert_eq!(created.tags, tags);
    let listed = m.list_mappings(Some(&queue)).await.unwrap();
    assert_eq!(listed, vec![created.clone()]);
    assert!(m.list_mappings(None).await.unwrap().contains(&created));

    let updated = m
        .update_mapping(&created.id, config(10, 0, 20))
        .await
        .unwrap();
    assert_eq!(updated.config, config(10, 0, 20));
    let disabled = m
        .update_mapping(
            &created.id,
            MappingConfig {
                enabled: false,
                ..config(10, 0, 20)
            },
        )
        .await
        .unwrap();
    assert!(!disabled.config.enabled);
    assert!(
        !m.list_mappings(Some(&queue)).await.unwrap()[0]
            .config
            .enabled
    );
    m.update_mapping(&created.id, config(10, 0, 20))
        .await
        .unwrap();
    assert_eq!(
        m.list_mappings(Some(&queue)).await.unwrap()[0].config,
        config(10, 0, 20)
    );
    assert!(matches!(
        m.update_mapping(&created.id, config(10, 0, 0)).await,
        Err(MappingError::Invalid(_))
    ));

    // Provisioned mode instead of MaximumConcurrency, and back; never both.
    let provisioned = MappingConfig {
        max_concurrency: None,
        provisioned_pollers: Some(ProvisionedPollers {
            minimum: 3,
            maximum: 30,
        }),
        ..config(10, 0, 2)
    };
    let updated = m.update_mapping(&created.id, provisioned).await.unwrap();
    assert_eq!(updated.config, provisioned);
    assert_eq!(
        m.list_mappings(Some(&queue)).await.unwrap()[0].config,
        provisioned
    );
    assert_eq!(provisioned.concurrency_cap(), 300);
    for bad in [
        MappingConfig {
            max_concurrency: Some(20),
            ..provisioned
        },
        MappingConfig {
            provisioned_pollers: Some(ProvisionedPollers {
                minimum: 1,
                maximum: 30,
            }),
            ..provisioned
        },
    ] {
        assert!(
            matches!(
                m.update_mapping(&created.id, bad).await,
                Err(MappingError::Invalid(_))
            ),
            "{bad:?} was accepted"
        );
    }
    m.update_mapping(&created.id, config(10, 0, 20))
        .await
        .unwrap();
    assert_eq!(
        m.list_mappings(Some(&queue)).await.unwrap()[0].config,
        config(10, 0, 20)
    );
    m.delete_mapping(&created.id).await.unwrap();
    m.delete_mapping(&created.id).await.unwrap();
    assert!(m.list_mappings(Some(&queue)).await.unwrap().is_empty());
    assert!(matches!(
        m.update_mapping(&created.id, config(10, 0, 2)).await,
        Err(MappingError::NotFound(_))
    ));

    // Reserved concurrency.
    assert_eq!(m.get_reserved_concurrency("transform").await.unwrap(), None);
    m.put_reserved_concurrency("transform", 40).await.unwrap();
    assert_eq!(
        m.get_reserved_concurrency("transform").await.unwrap(),
        Some(40)
    );
    m.put_reserved_concurrency("transform", 0).await.unwrap();
    assert_eq!(
        m.get_reserved_concurrency("transform").await.unwrap(),
        Some(0)
    );
    assert!(matches!(
        m.put_reserved_concurrency("transform", 5_000).await,
        Err(MappingError::Invalid(_))
    ));
    m.delete_reserved_concurrency("transform").await.unwrap();
    assert_eq!(m.get_reserved_concurrency("transform").await.unwrap(), None);
    m.delete_reserved_concurrency("transform").await.unwrap();
    p.queues.delete_queue(&queue).await.unwrap();
}

macro_rules! contract {
    ($suite:ident, $embedded:ident, $aws:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $embedded() {
            $suite(&embedded()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $aws() {
            $suite(&aws(stringify!($suite)).await).await;
        }
    };
}

contract!(store_contract, store_embedded, store_aws);
contract!(
    store_limits_contract,
    store_limits_embedded,
    store_limits_aws
);
contract!(queues_contract, queues_embedded, queues_aws);
contract!(blobs_contract, blobs_embedded, blobs_aws);
contract!(mappings_contract, mappings_embedded, mappings_aws);

/// DynamoDB's own refusal of an item's size is the same error as ours. moto counts a number
/// by its digits (20 bytes for u64::MAX, where DynamoDB counts 11), so this item passes our
/// check and is refused by the service: the adapter must still say `TooLarge`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_refusal_of_an_item_size_is_too_large() {
    let p = aws("refusal").await;
    let numbers: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| (format!("k{i:05}"), json!(u64::MAX)))
        .collect();
    let key = Key::new(format!("{}#refused", p.prefix), "item");
    assert!(limits::check_item(&key, &numbers).is_ok());
    let refused = |result: Result<(), StoreError>| match result {
        Err(StoreError::TooLarge(o)) => {
            assert!(o.what.contains("by DynamoDB's count"), "{o}");
            assert_eq!(o.limit, 400_000);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    };
    refused(
        p.store
            .put(&key, numbers.clone(), Condition::Always)
            .await
            .map(drop),
    );
    refused(
        p.store
            .transact(vec![TxOp::Put {
                key: Key::new(format!("{}#refused", p.prefix), "in-tx"),
                attrs: numbers,
                condition: Condition::Always,
            }])
            .await,
    );
}
