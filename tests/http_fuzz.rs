//! Property test of every HTTP body a browser can send: whatever the bytes, a web server with a
//! real data server behind it answers with 2xx or 4xx (never 5xx, never a hang) and keeps
//! serving. This is the proptest stand-in for a cargo-fuzz target, which needs a nightly
//! toolchain that this project does not use.

mod common;

use common::Group;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// Routes that take a JSON body. Logout is left out: it would end the session that the other
/// routes need to get past the session check.
const ROUTES: [&str; 5] = ["/api/users", "/api/login", "/api/subjects", "/api/private/bob", "SUBJECT_MESSAGES"];

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        "[a-z]{1,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![Just("name".to_owned()), Just("password".to_owned()), Just("title".to_owned()), Just("text".to_owned()), ".{0,8}"],
                inner,
                0..5
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        any_json().prop_map(|value| value.to_string().into_bytes()),
        (".{0,64}", ".{0,64}").prop_map(|(name, password)| json!({"name": name, "password": password}).to_string().into_bytes()),
        ".{0,64}".prop_map(|text| json!({"text": text}).to_string().into_bytes()),
        ".{0,64}".prop_map(|title| json!({"title": title}).to_string().into_bytes()),
    ]
}

#[test]
fn any_body_gets_a_client_error_or_success() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (group, client, subject) = runtime.block_on(async {
        let group = Group::start_alone().await;
        let client = group.web(0).user("fuzzer").await;
        group.web(0).user("bob").await;
        let subject = client.create_subject("Fuzzing").await;
        (group, client, subject)
    });
    let messages = format!("/api/subjects/{subject}/messages");

    let content_types = prop_oneof![
        4 => Just("application/json"),
        1 => Just("text/plain"),
        1 => Just("application/json; charset=utf-8"),
        1 => Just("multipart/form-data"),
    ];
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    runner
        .run(&(0..ROUTES.len(), content_types, any_body()), |(route, content_type, body)| {
            let path = if ROUTES[route] == "SUBJECT_MESSAGES" { messages.as_str() } else { ROUTES[route] };
            let response = runtime.block_on(client.post_raw(path, content_type, body.clone()));
            prop_assert!(
                (200..500).contains(&response.status),
                "POST {} ({}) {:?} got {:?}",
                path,
                content_type,
                String::from_utf8_lossy(&body),
                response
            );
            if response.status >= 400 {
                prop_assert!(response.body["error"].is_string(), "no JSON error for {:?}", response);
            }
            Ok(())
        })
        .unwrap();

    runtime.block_on(async {
        assert_eq!(client.get("/api/subjects").await.status, 200, "the web server stopped serving");
        group.shutdown().await;
    });
}
