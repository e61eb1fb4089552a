//! The JSON API over real HTTP, against a real data server.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::{Browser, Forum};

#[tokio::test]
async fn users_register_and_log_in() {
    let forum = Forum::start().await;
    let mut ana = forum.browser();

    let answer = ana.post("/api/users", json!({ "name": "ana", "password": "password1" })).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.body, json!({ "name": "ana" }));

    let answer = ana.post("/api/users", json!({ "name": "ana", "password": "password2" })).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.code(), "name_taken");

    let answer = ana.log_in("ana", "wrong-password").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.code(), "bad_credentials");
    assert!(ana.cookie.is_none());

    assert_eq!(ana.get("/api/me").await.status, StatusCode::UNAUTHORIZED);
    let answer = ana.log_in("ana", "password1").await;
    assert_eq!(answer.status, StatusCode::OK);
    let set_cookie = answer.headers["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let me = ana.get("/api/me").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body, json!({ "name": "ana" }));

    let users = ana.get("/api/users").await;
    assert_eq!(users.status, StatusCode::OK);
    assert_eq!(users.body, json!([{ "name": "ana", "online": false }]));

    let answer = ana.post("/api/logout", json!({})).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(ana.get("/api/me").await.status, StatusCode::UNAUTHORIZED);
    forum.stop().await;
}

#[tokio::test]
async fn subjects_and_messages() {
    let forum = Forum::start().await;
    let mut ana = forum.browser();
    ana.sign_up("ana").await;
    let reader = forum.browser();

    let created = ana.post("/api/subjects", json!({ "title": "  Exams  " })).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["title"], "Exams");
    assert_eq!(created.body["created_by"], "ana");
    let subject = created.body["id"].as_str().unwrap().to_owned();

    let duplicate = ana.post("/api/subjects", json!({ "title": "EXAMS" })).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.code(), "title_taken");

    let subjects = reader.get("/api/subjects").await;
    assert_eq!(subjects.status, StatusCode::OK);
    assert_eq!(subjects.body.as_array().unwrap().len(), 1);
    assert_eq!(subjects.body[0]["id"], subject.as_str());

    let path = format!("/api/subjects/{subject}/messages");
    let mut answers = Vec::new();
    for text in ["first", "second"] {
        let posted = ana.post(&path, json!({ "text": text })).await;
        assert_eq!(posted.status, StatusCode::CREATED, "{:?}", posted.body);
        assert_eq!(posted.body["author"], "ana");
        assert_eq!(posted.body["subject"], subject.as_str());
        for field in ["id", "time", "lamport"] {
            assert!(!posted.body[field].is_null(), "missing {field}");
        }
        answers.push(posted.body);
    }
    let history = reader.get(&path).await;
    assert_eq!(history.status, StatusCode::OK);
    let texts: Vec<&str> = history.body.as_array().unwrap().iter().map(|message| message["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["first", "second"]);
    // The web server builds each response body from the data server's brief reply and its
    // own request, and the body must be the message as stored.
    assert_eq!(history.body, json!(answers));

    let forged = ana.post(&path, json!({ "text": "hi", "author": "luis" })).await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    assert_eq!(forged.code(), "invalid_body");

    assert_eq!(reader.post(&path, json!({ "text": "anonymous" })).await.status, StatusCode::UNAUTHORIZED);

    let unknown = ana.get("/api/subjects/99-99/messages").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "unknown_subject");
    let unknown = ana.post("/api/subjects/99-99/messages", json!({ "text": "lost" })).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "unknown_subject");
    forum.stop().await;
}

#[tokio::test]
async fn private_conversation() {
    let forum = Forum::start().await;
    let mut ana = forum.browser();
    ana.sign_up("ana").await;
    let mut luis = forum.browser();
    luis.sign_up("luis").await;

    let sent = ana.post("/api/private/luis", json!({ "text": "hola luis" })).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
    assert_eq!(sent.body["from"], "ana");
    assert_eq!(sent.body["to"], "luis");
    // With the recipient's name in capitals, the response names the registered spelling.
    let reply = luis.post("/api/private/ANA", json!({ "text": "hola ana" })).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!((&reply.body["from"], &reply.body["to"]), (&json!("luis"), &json!("ana")));

    let conversation = ana.get("/api/private/luis").await;
    assert_eq!(conversation.status, StatusCode::OK);
    let texts: Vec<&str> = conversation.body.as_array().unwrap().iter().map(|message| message["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["hola luis", "hola ana"]);
    assert_eq!(conversation.body, json!([sent.body, reply.body]), "the answers are the messages as stored");

    let nobody = ana.post("/api/private/nobody", json!({ "text": "hello?" })).await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
    assert_eq!(nobody.code(), "unknown_user");
    assert_eq!(ana.get("/api/private/nobody").await.status, StatusCode::NOT_FOUND);
    assert_eq!(forum.browser().get("/api/private/luis").await.status, StatusCode::UNAUTHORIZED);
    forum.stop().await;
}

#[tokio::test]
async fn errors_in_spanish() {
    let forum = Forum::start().await;
    let mut browser = Browser::new(forum.web.local_addr());
    browser.language = Some("es-ES,es;q=0.9,en;q=0.5");
    let answer = browser.post("/api/users", json!({ "name": "ana", "password": "corta" })).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.code(), "password_too_short");
    assert_eq!(answer.body["error"], "La contraseña tiene menos de 8 caracteres.");
    assert_eq!(answer.headers["x-content-type-options"], "nosniff");
    forum.stop().await;
}
