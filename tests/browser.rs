//! Real-browser scenarios: headless Chromium, driven through chromedriver, uses the forum page
//! served by real web servers attached to a real group of data servers on loopback.
//!
//! Needs `chromium` and `chromedriver` (see tests/webdriver/mod.rs). Screenshots of the main
//! views go to `target/browser-screenshots/`, chromedriver logs to `target/browser-logs/`.

mod common;
mod webdriver;

use std::time::Duration;

use common::Group;
use forum_dataserver::DataServer;
use forum_webserver::{Config as WebConfig, WebServer};
use serde_json::json;
use webdriver::{Chromedriver, Language};

const PASSWORD: &str = "browser-test-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_appears_live_in_other_browser() {
    let Some(driver) = Chromedriver::start("post-live").await else { return };
    let group = Group::start(3).await;
    let ana = driver.browser("ana's browser on web server 1", Language::English).await;
    let bob = driver.browser("bob's browser on web server 3", Language::English).await;

    ana.open(&group.web(0).base).await;
    assert_eq!(ana.script("return document.documentElement.lang;").await, json!("en"));
    assert_eq!(ana.text("#login-button").await, "Log in");
    ana.screenshot("logged-out").await;
    ana.register("ana", PASSWORD).await;
    let subject = ana.create_subject("Distributed systems").await;

    bob.open(&group.web(2).base).await;
    bob.register("bob", PASSWORD).await;
    bob.open_subject(&subject).await;
    assert_eq!(bob.message_texts().await, Vec::<String>::new(), "the new subject starts empty");
    bob.set_marker().await;

    ana.post("hello from web server 1").await;
    ana.wait_for_message("hello from web server 1").await;

    bob.wait_for_message("hello from web server 1").await;
    assert!(bob.has_marker().await, "bob's page was reloaded; the post must arrive on the open page");
    let authors = bob.script("return Array.from(document.querySelectorAll('#message-list .message-author'), (e) => e.textContent);").await;
    assert_eq!(authors, json!(["ana"]));
    bob.screenshot("subject-with-messages").await;

    ana.close().await;
    bob.close().await;
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_message_shows_only_to_recipient() {
    let Some(driver) = Chromedriver::start("private").await else { return };
    let group = Group::start(3).await;
    let ana = driver.browser("ana's browser on web server 1", Language::English).await;
    let bob = driver.browser("bob's browser on web server 2", Language::English).await;
    let carol = driver.browser("carol's browser on web server 3", Language::English).await;

    for (browser, name, index) in [(&ana, "ana", 0), (&bob, "bob", 1), (&carol, "carol", 2)] {
        browser.open(&group.web(index).base).await;
        browser.register(name, PASSWORD).await;
    }
    bob.open_private("ana").await;
    carol.open_private("ana").await;
    bob.set_marker().await;
    carol.set_marker().await;

    ana.open_private("bob").await;
    ana.post("just for bob").await;
    bob.wait_for_message("just for bob").await;
    assert!(bob.has_marker().await, "bob's page was reloaded; the message must arrive on the open page");
    bob.screenshot("private-conversation").await;

    // The message to carol travels the same path after the one to bob, so once carol's page
    // shows it, the message to bob would have reached her page too had it leaked.
    ana.open_private("carol").await;
    ana.post("just for carol").await;
    carol.wait_for_message("just for carol").await;
    assert!(carol.has_marker().await, "carol's page was reloaded");
    assert_eq!(carol.message_texts().await, ["just for carol"], "carol's conversation with ana");
    let carol_page = carol.script("return document.body.textContent;").await;
    assert!(
        !carol_page.as_str().unwrap_or_default().contains("just for bob"),
        "the message to bob shows on carol's page"
    );
    carol.reload().await;
    carol.open_private("ana").await;
    carol.wait_for_message("just for carol").await;
    assert_eq!(carol.message_texts().await, ["just for carol"], "carol's conversation with ana after a reload");

    ana.close().await;
    bob.close().await;
    carol.close().await;
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_message_stays_text() {
    const MARKUP: &str = "<img src=x onerror=alert(1)>";
    let Some(driver) = Chromedriver::start("markup").await else { return };
    let group = Group::start(2).await;
    let ana = driver.browser("ana's browser on web server 1", Language::English).await;
    let bob = driver.browser("bob's browser on web server 2", Language::English).await;

    ana.open(&group.web(0).base).await;
    ana.register("ana", PASSWORD).await;
    let subject = ana.create_subject("Markup").await;
    bob.open(&group.web(1).base).await;
    bob.register("bob", PASSWORD).await;
    bob.open_subject(&subject).await;
    bob.set_marker().await;

    ana.post(MARKUP).await;
    // A second message gives an injected image time to load and fail before the checks.
    ana.post("after the markup").await;
    bob.wait_for_message("after the markup").await;
    assert!(bob.message_texts().await.contains(&MARKUP.to_owned()), "the markup is shown as its text");
    assert!(bob.has_marker().await, "bob's page was reloaded; the messages must arrive on the open page");

    // Live on both pages, then from the history after a reload.
    bob.reload().await;
    bob.wait_for_message("after the markup").await;
    for browser in [&ana, &bob] {
        assert_eq!(browser.open_alert().await, None, "an alert is open");
        let text_nodes = browser
            .script(
                "return Array.from(document.querySelectorAll('#message-list .message-text'))
                    .filter((element) => element.childNodes.length === 1
                        && element.firstChild.nodeType === Node.TEXT_NODE)
                    .map((element) => element.firstChild.data);",
            )
            .await;
        assert!(
            text_nodes.as_array().is_some_and(|nodes| nodes.contains(&json!(MARKUP))),
            "the markup is one text node in a message: {text_nodes}"
        );
        let images = browser.script("return document.querySelectorAll('#message-list img').length;").await;
        assert_eq!(images, json!(0), "an <img> element was created in the message list");
        let requests = browser
            .script("return performance.getEntriesByType('resource').filter((entry) => entry.name.endsWith('/x')).length;")
            .await;
        assert_eq!(requests, json!(0), "the page requested the image /x");
    }
    bob.screenshot("markup-as-text").await;

    ana.close().await;
    bob.close().await;
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_is_spanish_for_spanish_browser() {
    let Some(driver) = Chromedriver::start("spanish").await else { return };
    let group = Group::start_alone().await;
    let browser = driver.browser("a Spanish browser", Language::Spanish).await;

    browser.open(&group.web(0).base).await;

    let languages = browser.script("return navigator.languages;").await;
    assert_eq!(languages[0], json!("es-ES"), "Chromium's language preference");
    assert_eq!(browser.script("return document.documentElement.lang;").await, json!("es"));
    assert_eq!(browser.script("return document.getElementById('language-select').value;").await, json!("es"));
    assert_eq!(browser.text(".brand-name").await, "Foro");
    assert_eq!(browser.text("#login-button").await, "Iniciar sesión");
    assert_eq!(browser.text("#register-button").await, "Registrarse");
    assert_eq!(browser.text("#subjects-heading").await, "Temas");
    assert_eq!(browser.text("#connection-status-text").await, "En directo");

    // Errors come from the server, in the language that the page requests.
    browser.fill("#login-name", "nadie").await;
    browser.fill("#login-password", PASSWORD).await;
    browser.click("#login-button").await;
    let script = "return document.getElementById('auth-error').textContent !== '';";
    browser.wait_for_script_value("the login error is shown", script, &json!(true)).await;
    let error = browser.text("#auth-error").await.to_lowercase();
    assert!(error.contains("contraseña") || error.contains("usuario"), "the login error is not Spanish: {error}");
    browser.screenshot("spanish").await;

    browser.close().await;
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_messages_load_on_request() {
    // One more than two pages of the page's 200 messages, so the button is clicked twice.
    const POSTS: usize = 401;
    let Some(driver) = Chromedriver::start("older-messages").await else { return };
    let group = Group::start_alone().await;
    let writer = group.web(0).user("ana").await;
    let subject = writer.create_subject("Long history").await;
    let texts: Vec<String> = (0..POSTS).map(|number| format!("post {number}")).collect();
    for text in &texts {
        writer.post_message(&subject, text).await;
    }
    let browser = driver.browser("bob's browser", Language::English).await;
    browser.open(&group.web(0).base).await;
    browser.register("bob", PASSWORD).await;
    browser.open_subject(&subject).await;
    browser.wait_for_message("post 400").await;
    assert_eq!(browser.message_texts().await, texts[201..], "the newest page shows first");
    assert_eq!(browser.text("#load-older").await, "Load older messages");
    browser.set_marker().await;

    // A live post arrives, then the older page: both show, each once, in history order.
    writer.post_message(&subject, "live while paging").await;
    browser.wait_for_message("live while paging").await;
    let anchor_top = "return document.querySelector('[data-message-id]').getBoundingClientRect().top;";
    let top_before = browser.script(anchor_top).await;
    let first_id = browser.script("return document.querySelector('[data-message-id]').dataset.messageId;").await;
    browser.click("#load-older").await;
    browser.wait_for_message("post 1").await;
    let after_first_load = browser.message_texts().await;
    assert_eq!(after_first_load.first().map(String::as_str), Some("post 1"));
    assert_eq!(after_first_load.last().map(String::as_str), Some("live while paging"));
    assert_eq!(after_first_load.len(), 401, "two pages and the live post");
    let anchor = format!("return document.querySelector('[data-message-id=\"{}\"]').getBoundingClientRect().top;", first_id.as_str().unwrap());
    assert_eq!(browser.script(&anchor).await, top_before, "the message that was on top stays in place");
    browser.screenshot("older-messages").await;

    browser.click("#load-older").await;
    browser.wait_for_message("post 0").await;
    let mut expected = texts.clone();
    expected.push("live while paging".to_owned());
    assert_eq!(browser.message_texts().await, expected, "every message once, in history order");
    let script = "return document.getElementById('load-older').hidden;";
    browser.wait_for_script_value("the button hides at the start of the history", script, &json!(true)).await;
    assert!(browser.has_marker().await, "the page was reloaded");

    browser.close().await;
    group.shutdown().await;
}

/// Starts a web server configured with two data servers, `first` and then `second`, as a
/// comma-separated list of endpoints, so it can move to `second` when `first` stops.
async fn start_web_server_with_fallback(first: &DataServer, second: &DataServer) -> WebServer {
    let config = WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_request_endpoint: format!("{},{}", first.request_endpoint(), second.request_endpoint()),
        data_pub_endpoint: format!("{},{}", first.pub_endpoint(), second.pub_endpoint()),
        name: "web-with-fallback".to_owned(),
        request_timeout: Duration::from_secs(5),
    };
    WebServer::start(config).await.unwrap_or_else(|error| {
        panic!(
            "starting a web server with two data servers failed: {error:#}. This test needs \
             web-server failover: a web server that takes a comma-separated list of data servers"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_survives_its_data_server_stopping() {
    let Some(driver) = Chromedriver::start("failover").await else { return };
    let mut group = Group::start(3).await;
    let web = start_web_server_with_fallback(group.data(0), group.data(1)).await;
    let ana = driver.browser("ana's browser on the web server of data servers 1 and 2", Language::English).await;
    let bob = driver.browser("bob's browser on web server 2", Language::English).await;

    ana.open(&format!("http://{}", web.local_addr())).await;
    ana.register("ana", PASSWORD).await;
    let subject = ana.create_subject("Failover").await;
    bob.open(&group.web(1).base).await;
    bob.register("bob", PASSWORD).await;
    bob.open_subject(&subject).await;
    bob.post("before the stop").await;
    ana.wait_for_message("before the stop").await;
    ana.set_marker().await;

    let first = group.nodes.remove(0);
    first.web.shutdown().await;
    first.data.shutdown().await;
    bob.post("after the stop").await;

    let missing = "the web server must move to data server 2 when data server 1 stops (web-server failover)";
    ana.wait_for_message_or_explain("after the stop", missing).await;
    assert!(ana.has_marker().await, "ana's page was reloaded; it must keep receiving without a reload");
    ana.screenshot("after-failover").await;

    ana.close().await;
    bob.close().await;
    web.shutdown().await;
    group.shutdown().await;
}
