//! History pages over HTTP: `before` and `limit` on `GET /api/subjects/{id}/messages` and
//! `GET /api/private/{user}`, the `Link` header that leads to older pages, and the errors for
//! bad parameters, on real data servers and web servers.

mod common;

use common::{texts, Group, WebClient};
use serde_json::{json, Value};

/// Returns the path and query of a `Link: <...>; rel="next"` header value.
fn next_path(link: &str) -> &str {
    let (target, relation) = link.split_once(';').unwrap_or_else(|| panic!("a Link header without parameters: {link}"));
    assert_eq!(relation.trim(), "rel=\"next\"", "{link}");
    target.trim().strip_prefix('<').and_then(|target| target.strip_suffix('>')).unwrap_or_else(|| panic!("{link}"))
}

/// Reads `first` and every older page that the `Link` headers lead to, and returns the texts
/// of all pages, oldest first, and the size of each page, newest page first.
async fn walk_pages(client: &WebClient, first: &str) -> (Vec<String>, Vec<usize>) {
    let mut walked: Vec<String> = Vec::new();
    let mut sizes = Vec::new();
    let mut path = first.to_owned();
    loop {
        let page = client.get(&path).await;
        assert_eq!(page.status, 200, "reading {path}: {page:?}");
        let mut page_texts = texts(&page.body);
        sizes.push(page_texts.len());
        page_texts.extend(walked);
        walked = page_texts;
        match &page.link {
            Some(link) => path = next_path(link).to_owned(),
            None => return (walked, sizes),
        }
    }
}

fn numbered(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|number| format!("{prefix} {number}")).collect()
}

/// Logs ana in on the first web server, creates the subject `title` and posts `count`
/// messages "post 0", "post 1" and so on to it. Returns ana's client and the subject id.
async fn subject_with_posts(group: &Group, title: &str, count: usize) -> (WebClient, String) {
    let ana = group.web(0).user("ana").await;
    let subject = ana.create_subject(title).await;
    for text in numbered("post", count) {
        ana.post_message(&subject, &text).await;
    }
    (ana, subject)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_pages_walk_back_to_start() {
    let group = Group::start(2).await;
    let ana = group.web(0).user("ana").await;
    let subject = ana.create_subject("Paging").await;
    for text in numbered("post", 25) {
        ana.post_message(&subject, &text).await;
    }
    // Read on the other node, whose data server got the posts by replication.
    let reader = group.web(1);
    let path = format!("/api/subjects/{subject}/messages");
    common::eventually("the posts reach data server 2", || async { reader.history_texts(&subject).await.len() == 25 }).await;

    let whole = reader.get(&path).await;
    assert_eq!(texts(&whole.body), numbered("post", 25), "a history below the default limit fits one page");
    assert_eq!(whole.link, None, "no Link header without older messages");

    let first = reader.get(&format!("{path}?limit=10")).await;
    assert_eq!(texts(&first.body), numbered("post", 25)[15..], "the first page is the newest");
    let cursor = first.body[0]["id"].as_str().expect("a message id");
    let link = first.link.as_deref().expect("a Link header while older messages remain");
    assert_eq!(next_path(link), format!("{path}?before={cursor}&limit=10"));

    let (walked, sizes) = walk_pages(&reader, &format!("{path}?limit=10")).await;
    assert_eq!(walked, numbered("post", 25), "every message once, in history order");
    assert_eq!(sizes, [10, 10, 5]);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_posts_leave_older_pages_alone() {
    let group = Group::start_alone().await;
    let (ana, subject) = subject_with_posts(&group, "Busy", 6).await;
    let path = format!("/api/subjects/{subject}/messages");
    let first = ana.get(&format!("{path}?limit=3")).await;
    assert_eq!(texts(&first.body), numbered("post", 6)[3..]);

    ana.post_message(&subject, "posted while reading").await;
    let second = ana.get(next_path(first.link.as_deref().expect("a Link header"))).await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(texts(&second.body), numbered("post", 6)[..3], "the page before the cursor is unchanged");
    assert_eq!(second.link, None, "the start of the history is reached");

    let newest = ana.get(&format!("{path}?limit=1")).await;
    assert_eq!(texts(&newest.body), ["posted while reading"]);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_page_holds_200_messages() {
    let group = Group::start_alone().await;
    let (ana, subject) = subject_with_posts(&group, "Long", 201).await;
    let path = format!("/api/subjects/{subject}/messages");

    let first = ana.get(&path).await;
    assert_eq!(texts(&first.body), numbered("post", 201)[1..], "the newest 200 messages");
    let link = first.link.as_deref().expect("a Link header");
    assert!(link.ends_with("&limit=200>; rel=\"next\""), "{link}");
    let second = ana.get(next_path(link)).await;
    assert_eq!(texts(&second.body), ["post 0"]);
    assert_eq!(second.link, None);

    let maximum = ana.get(&format!("{path}?limit=1000")).await;
    assert_eq!(texts(&maximum.body).len(), 201, "the maximum limit is accepted");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_pages_walk_back() {
    let group = Group::start_alone().await;
    let ana = group.web(0).user("ana").await;
    let bob = WebClient::new(group.nodes[0].web.local_addr()).user("bob").await;
    for text in numbered("private", 12) {
        let sent = ana.post("/api/private/bob", json!({ "text": text })).await;
        assert_eq!(sent.status, 201, "{sent:?}");
    }

    let first = bob.get("/api/private/ana?limit=5").await;
    assert_eq!(texts(&first.body), numbered("private", 12)[7..]);
    let link = first.link.as_deref().expect("a Link header");
    assert!(link.starts_with("</api/private/ana?before="), "{link}");

    let (walked, sizes) = walk_pages(&bob, "/api/private/ana?limit=5").await;
    assert_eq!(walked, numbered("private", 12));
    assert_eq!(sizes, [5, 5, 2]);
    let (walked, _) = walk_pages(&ana, "/api/private/BOB?limit=4").await;
    assert_eq!(walked, numbered("private", 12), "ana reads the same conversation");

    let empty = ana.get("/api/private/ana?limit=5").await;
    assert_eq!(empty.status, 200, "{empty:?}");
    assert_eq!(empty.body, json!([]));
    assert_eq!(empty.link, None);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paging_parameters_get_400() {
    let group = Group::start_alone().await;
    let ana = group.web(0).user("ana").await;
    let bob = WebClient::new(group.nodes[0].web.local_addr()).user("bob").await;
    let subject = ana.create_subject("Checked").await;
    let other = ana.create_subject("Other").await;
    let elsewhere = ana.post_message(&other, "in another subject").await;
    let elsewhere = elsewhere["id"].as_str().expect("a message id");
    let private = bob.post("/api/private/ana", json!({ "text": "hello" })).await;
    let private = private.body["id"].as_str().expect("a message id").to_owned();

    let subject_path = format!("/api/subjects/{subject}/messages");
    let cases: Vec<(String, &str)> = vec![
        (format!("{subject_path}?limit=0"), "invalid_limit"),
        (format!("{subject_path}?limit=-5"), "invalid_limit"),
        (format!("{subject_path}?limit=ten"), "invalid_limit"),
        (format!("{subject_path}?limit=1001"), "invalid_limit"),
        (format!("{subject_path}?limit="), "invalid_limit"),
        (format!("{subject_path}?limit=5&limit=6"), "invalid_limit"),
        (format!("{subject_path}?before=abc"), "invalid_cursor"),
        (format!("{subject_path}?before=2-"), "invalid_cursor"),
        (format!("{subject_path}?before=9-9"), "unknown_message"),
        (format!("{subject_path}?before={elsewhere}"), "unknown_message"),
        (format!("{subject_path}?before={private}"), "unknown_message"),
        ("/api/private/bob?limit=0".to_owned(), "invalid_limit"),
        ("/api/private/bob?before=x".to_owned(), "invalid_cursor"),
        (format!("/api/private/bob?before={elsewhere}"), "unknown_message"),
    ];
    for (path, code) in cases {
        let response = ana.get(&path).await;
        assert_eq!(response.status, 400, "{path}: {response:?}");
        assert_eq!(response.body["code"], code, "{path}: {response:?}");
    }
    let unknown_subject = ana.get("/api/subjects/9-9/messages?limit=5").await;
    assert_eq!(unknown_subject.status, 404, "{unknown_subject:?}");
    let encoded_id = subject.replace('-', "%2D");
    let encoded = ana.get(&format!("/api/subjects/{encoded_id}/messages?b%65fore={elsewhere}")).await;
    assert_eq!(encoded.status, 400, "a percent-encoded subject id and parameter name: {encoded:?}");
    assert_eq!(encoded.body["code"], "unknown_message", "{encoded:?}");

    let english = ana.get(&format!("{subject_path}?limit=0")).await;
    assert_eq!(english.body["error"], "The limit parameter must appear once, as a whole number from 1 to 1000.");
    let spanish = spanish_get(&ana, &format!("{subject_path}?before={elsewhere}")).await;
    assert_eq!(spanish["error"], "El mensaje del parámetro before no está en este tema ni en esta conversación.");
    group.shutdown().await;
}

/// Sends a GET with `Accept-Language: es` and returns the JSON body.
async fn spanish_get(client: &WebClient, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", client.base))
        .header("accept-language", "es")
        .send()
        .await
        .expect("sending a GET");
    response.json().await.expect("a JSON body")
}
