//! `outbox dashboard` over HTTP against a real Postgres outbox: the views match the store,
//! every mutation is guarded (token, session + CSRF, origin), read-only mode, escaping, the
//! purge that asks first, pages that load nothing from elsewhere, the relay-served dashboard,
//! and the views and replay on every SQL backend (Postgres, MariaDB, SQLite).

mod common;
mod dashboard_support;

use std::time::Duration;

use common::{Db, wait_until};
use dashboard_support::{Backend, Served, client, counts, csrf_in, db_on, dead_letter, drop_db, free_port, published};
use outbox::OutboxStore;
use reqwest::StatusCode;
use serde_json::Value;

const TOKEN: &str = "correct-horse-battery-staple";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_views_match_the_store() {
    let Some(db) = Db::new().await else { return };
    db.write("orders", 7, 2, 7).await;
    let json_dead = dead_letter(&db, "billing", "acct-1", r#"{"amount":12,"items":[1,2]}"#, "broker said no").await;
    let text_dead = dead_letter(&db, "mail", "acct-2", "plain text", "timeout").await;
    let served = Served::dashboard(&db, &[]).await;
    let http = client();

    let stats: Value = http.get(served.url("/api/stats")).send().await.unwrap().json().await.unwrap();
    let s = db.store.stats().await.unwrap();
    assert_eq!(stats["pending"], s.pending);
    assert_eq!(stats["claimed"], s.claimed);
    assert_eq!(stats["dead"], 2);
    assert_eq!(stats["read_only"], true);
    assert!(stats["oldest_pending_age_seconds"].as_f64().is_some());

    let keys: Value = http.get(served.url("/api/keys?limit=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(keys, serde_json::json!([{ "key": "key-0", "pending": 4 }]));

    let all: Value = http.get(served.url("/api/dead")).send().await.unwrap().json().await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let billing: Value = http.get(served.url("/api/dead?topic=billing")).send().await.unwrap().json().await.unwrap();
    assert_eq!(billing.as_array().unwrap().len(), 1);
    assert_eq!(billing[0]["id"], json_dead.to_string());
    assert_eq!(billing[0]["last_error"], "broker said no");
    assert_eq!(billing[0]["attempts"], 1);

    let one: Value =
        http.get(served.url(&format!("/api/dead/{json_dead}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["payload_kind"], "json");
    assert_eq!(one["payload"], "{\n  \"amount\": 12,\n  \"items\": [\n    1,\n    2\n  ]\n}");
    let text: Value =
        http.get(served.url(&format!("/api/dead/{text_dead}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!((text["payload_kind"].as_str(), text["payload"].as_str()), (Some("text"), Some("plain text")));
    let missing = http.get(served.url(&format!("/api/dead/{}", outbox::MessageId::new()))).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let bad = http.get(served.url("/api/dead/not-a-uuid")).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // The sampler records the pending count every second.
    let pending = s.pending;
    let sampled = wait_until(Duration::from_secs(10), || async {
        let series: Value = http.get(served.url("/api/series")).send().await.unwrap().json().await.unwrap();
        series["source"] == "database" && series["points"].as_array().unwrap().iter().any(|p| p["pending"] == pending)
    })
    .await;
    assert!(sampled, "the series samples the pending count");

    // The page shows the same figures.
    let page = http.get(served.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("id=\"stat-pending\">{pending}<")), "{page}");
    assert!(page.contains("id=\"stat-dead\">2<"), "{page}");
    assert!(page.contains("<code>key-0</code>"), "{page}");
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_mutations_need_the_token_and_the_same_origin() {
    let Some(db) = Db::new().await else { return };
    let id = dead_letter(&db, "billing", "k", "{}", "boom").await;
    let served = Served::dashboard(&db, &["--token", TOKEN]).await;
    let http = client();
    let replay = served.url(&format!("/api/dead/{id}/replay"));
    let before = counts(&db).await;

    let none = http.post(&replay).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let wrong = http.post(&replay).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let purge = http.post(served.url("/api/dead/purge?older_than=0s")).bearer_auth("nope").send().await.unwrap();
    assert_eq!(purge.status(), StatusCode::UNAUTHORIZED);
    // A mutation is never a GET.
    assert_eq!(http.get(&replay).bearer_auth(TOKEN).send().await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
    // The right token from another site is refused.
    let evil = http.post(&replay).bearer_auth(TOKEN).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(evil.status(), StatusCode::FORBIDDEN);
    let site = http.post(&replay).bearer_auth(TOKEN).header("sec-fetch-site", "cross-site").send().await.unwrap();
    assert_eq!(site.status(), StatusCode::FORBIDDEN);
    assert_eq!(counts(&db).await, before, "nothing changed");
    let topic = http.post(served.url("/api/dead/replay")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(topic.status(), StatusCode::BAD_REQUEST, "a topic or all=true is required");

    let ok = http.post(&replay).bearer_auth(TOKEN).header("origin", &served.base).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.json::<Value>().await.unwrap()["replayed"], 1);
    assert_eq!(counts(&db).await, (before.0 + 1, before.1 - 1), "the dead letter is pending again");
    let again = http.post(&replay).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND, "no longer dead");

    dead_letter(&db, "mail", "m", "x", "e").await;
    dead_letter(&db, "mail", "m2", "y", "e").await;
    let by_topic = http.post(served.url("/api/dead/replay?topic=mail")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(by_topic.json::<Value>().await.unwrap()["replayed"], 2);
    dead_letter(&db, "mail", "m3", "z", "e").await;
    let purged = http.post(served.url("/api/dead/purge?older_than=0s")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(purged.json::<Value>().await.unwrap()["purged"], 1);
    assert_eq!(counts(&db).await.1, 0);
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_need_a_session_and_its_csrf_token() {
    let Some(db) = Db::new().await else { return };
    let id = dead_letter(&db, "billing", "k", "{}", "boom").await;
    let served = Served::dashboard(&db, &["--token", TOKEN]).await;
    let http = client();
    let before = counts(&db).await;

    // Not logged in: no buttons, a log-in link, and a form post is refused.
    let page = http.get(served.url("/dead")).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("name=\"csrf\""), "no forms before logging in");
    assert!(page.contains("href=\"/login\""));
    let anon = http.post(served.url(&format!("/dead/{id}/replay"))).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);

    let bad = http.post(served.url("/login")).form(&[("token", "wrong")]).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(bad.headers().get("set-cookie").is_none());
    let cross = http
        .post(served.url("/login"))
        .header("origin", "http://evil.example")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN, "no log-in from another site");

    let login = http.post(served.url("/login")).form(&[("token", TOKEN)]).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let page = http.get(served.url("/dead")).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    let csrf = csrf_in(&page).expect("a CSRF token in the forms");
    assert!(page.contains(&format!("id=\"replay-{id}\"")), "a replay button");
    let form = served.url(&format!("/dead/{id}/replay"));

    let no_csrf = http.post(&form).header("cookie", &cookie).form(&[("x", "1")]).send().await.unwrap();
    assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);
    let wrong_csrf = http.post(&form).header("cookie", &cookie).form(&[("csrf", "0000")]).send().await.unwrap();
    assert_eq!(wrong_csrf.status(), StatusCode::FORBIDDEN);
    let bad_origin = http
        .post(&form)
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_origin.status(), StatusCode::FORBIDDEN);
    let api_no_csrf =
        http.post(served.url(&format!("/api/dead/{id}/replay"))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(api_no_csrf.status(), StatusCode::FORBIDDEN, "the API takes a session only with X-CSRF-Token");
    assert_eq!(counts(&db).await, before, "nothing changed");

    let ok = http
        .post(&form)
        .header("cookie", &cookie)
        .header("origin", &served.base)
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    let to = ok.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with("/dead?notice=Replayed%201"), "{to}");
    assert_eq!(counts(&db).await, (before.0 + 1, before.1 - 1), "pending again");
    let page = http.get(served.url(&to)).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("it is pending again"), "{page}");

    // Logging out ends the session.
    let out = http.post(served.url("/logout")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let other = dead_letter(&db, "billing", "k2", "{}", "boom").await;
    let after = http
        .post(served.url(&format!("/dead/{other}/replay")))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_dashboard_is_read_only() {
    let Some(db) = Db::new().await else { return };
    let id = dead_letter(&db, "billing", "k", "{}", "boom").await;
    let served = Served::dashboard(&db, &[]).await;
    let http = client();
    let before = counts(&db).await;

    for path in ["/", "/dead", &format!("/dead/{id}"), "/keys"] {
        let page = http.get(served.url(path)).send().await.unwrap().text().await.unwrap();
        assert!(page.contains("id=\"read-only\""), "{path} says it is read-only: {page}");
        assert!(page.contains("replay and purge are disabled"), "{path}");
        assert!(!page.contains("name=\"csrf\""), "{path} has no forms");
    }
    for path in
        [format!("/api/dead/{id}/replay"), "/api/dead/replay?all=true".into(), "/api/dead/purge?older_than=0s".into()]
    {
        let r = http.post(served.url(&path)).bearer_auth("anything").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(r.text().await.unwrap().contains("read-only"));
    }
    let form = http.post(served.url(&format!("/dead/{id}/replay"))).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(form.status(), StatusCode::FORBIDDEN);
    let login = http.post(served.url("/login")).form(&[("token", "")]).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::FORBIDDEN);
    assert_eq!(counts(&db).await, before, "nothing changed");
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_and_errors_are_escaped() {
    let Some(db) = Db::new().await else { return };
    let payload = "<script>document.title='pwned'</script>";
    let error = "bad <img src=x onerror=alert(1)> & more";
    let id = dead_letter(&db, "<b>topic</b>", "<i>key</i>", payload, error).await;
    let served = Served::dashboard(&db, &["--token", TOKEN]).await;
    let http = client();

    let one = http.get(served.url(&format!("/dead/{id}"))).send().await.unwrap();
    let csp = one.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    let page = one.text().await.unwrap();
    assert!(page.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"), "{page}");
    assert!(page.contains("bad &lt;img src=x onerror=alert(1)&gt; &amp; more"), "{page}");
    assert!(page.contains("&lt;b&gt;topic&lt;/b&gt;"));
    for raw in ["<script>document", "<img src=x", "<b>topic", "<i>key"] {
        assert!(!page.contains(raw), "{raw} appears unescaped");
    }
    let list = http.get(served.url("/dead")).send().await.unwrap().text().await.unwrap();
    assert!(list.contains("bad &lt;img src=x onerror=alert(1)&gt;"), "{list}");
    assert!(!list.contains("<img src=x"));
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_serves_the_dashboard_with_its_own_published_counter() {
    let (Some(db), Some(sink)) = (Db::new().await, common::NatsSink::new().await) else { return };
    let mut env = db.env();
    env.extend([
        ("NATS_URL", common::nats_url()),
        ("OUTBOX_STREAM", sink.stream.clone()),
        ("OUTBOX_PREFIX", sink.prefix.clone()),
    ]);
    let (health, metrics) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    #[rustfmt::skip]
    let args = [
        "relay", "--bus", "nats", "--interval", "100ms", "--min-age", "0s",
        "--health-addr", &health, "--metrics-addr", &metrics, "--dashboard-addr", "127.0.0.1:0",
    ];
    let served = Served::start(&env, &args).await;
    let http = client();
    db.write("orders", 40, 4, 10).await;
    let counted = wait_until(Duration::from_secs(30), || async {
        let series: Value = http.get(served.url("/api/series")).send().await.unwrap().json().await.unwrap();
        let published: u64 = series["points"].as_array().unwrap().iter().filter_map(|p| p["published"].as_u64()).sum();
        series["source"] == "relay" && published >= 40
    })
    .await;
    assert!(counted, "the chart counts the relay's 40 publishes: {}", served.log());
    assert!(sink.count().await >= 40);
    let page = http.get(served.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("data-source=\"relay\""), "{page}");
    assert!(page.contains("from the relay's own counter"));
    assert!(page.contains("id=\"read-only\""), "no --dashboard-token: read-only");
    // Beside /health and /metrics, each on its own address.
    let h = http.get(format!("http://{health}/health")).send().await.unwrap();
    assert_eq!(h.status(), StatusCode::OK);
    assert_eq!(h.json::<Value>().await.unwrap()["ok"], true);
    let m = http.get(format!("http://{metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("outbox_published_total"), "{m}");
    assert_eq!(http.get(served.url("/health")).send().await.unwrap().status(), StatusCode::NOT_FOUND, "not mixed");
    drop(served);
    sink.delete().await;
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listens_on_loopback_port_8081_by_default() {
    let Some(db) = Db::new().await else { return };
    // No --addr. Should something else hold the port, the failure to bind names the address.
    match Served::try_start(&db.env(), &["dashboard"]).await {
        Ok(served) => {
            assert_eq!(served.base, "http://127.0.0.1:8081", "{}", served.log());
            let stats = client().get(served.url("/api/stats")).send().await.unwrap();
            assert_eq!(stats.status(), StatusCode::OK);
            assert!(!served.log().contains("reachable beyond this machine"));
        }
        Err(log) => assert!(log.contains("cannot serve the dashboard on 127.0.0.1:8081"), "{log}"),
    }
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_can_come_from_the_environment() {
    let Some(db) = Db::new().await else { return };
    let id = dead_letter(&db, "billing", "k", "{}", "boom").await;
    let mut env = db.env();
    env.push(("OUTBOX_DASHBOARD_TOKEN", TOKEN.to_owned()));
    let served = Served::start(&env, &["dashboard", "--addr", "127.0.0.1:0"]).await;
    let http = client();

    let stats: Value = http.get(served.url("/api/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["read_only"], false);
    let page = http.get(served.url("/dead")).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("id=\"read-only\"") && page.contains("href=\"/login\""), "{page}");
    let replay = served.url(&format!("/api/dead/{id}/replay"));
    assert_eq!(http.post(&replay).bearer_auth("wrong").send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let ok = http.post(&replay).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(ok.json::<Value>().await.unwrap()["replayed"], 1);
    assert!(!served.log().contains(TOKEN), "the token is never logged");
    db.drop_table().await;
}

/// Every `<name …>` opening tag in `html`.
fn tags<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name} ");
    html.match_indices(&open).map(|(i, _)| &html[i..i + html[i..].find('>').unwrap() + 1]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_load_nothing_from_elsewhere() {
    let Some(db) = Db::new().await else { return };
    db.write("orders", 3, 1, 3).await;
    // A payload naming a CDN script stays text.
    let id = dead_letter(&db, "cdn", "k", r#"<script src="https://cdn.example/x.js"></script>"#, "e").await;
    let served = Served::dashboard(&db, &["--token", TOKEN]).await;
    let http = client();
    let (cookie, _) = dashboard_support::login(&http, &served, TOKEN).await;

    for logged_in in [false, true] {
        for path in ["/", "/keys", "/dead", &format!("/dead/{id}"), "/login"] {
            let mut get = http.get(served.url(path));
            if logged_in {
                get = get.header("cookie", &cookie);
            }
            let r = get.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
            assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
            let page = r.text().await.unwrap();
            // One script, the dashboard's own, with no inline code; one stylesheet, also its own.
            assert_eq!(tags(&page, "script"), ["<script src=\"/assets/dashboard.js\" defer>"], "{path}");
            assert!(page.contains("<script src=\"/assets/dashboard.js\" defer></script>"), "{path}");
            assert_eq!(tags(&page, "link"), ["<link rel=\"stylesheet\" href=\"/assets/dashboard.css\">"], "{path}");
            for remote in ["src=\"http", "href=\"http", "src=\"//", "href=\"//", "@import", "url("] {
                assert!(!page.contains(remote), "{path} has {remote}: {page}");
            }
            if path.starts_with("/dead/") {
                assert!(page.contains("&lt;script src=&quot;https://cdn.example/x.js&quot;&gt;"), "{page}");
            }
        }
    }
    let js = http.get(served.url("/assets/dashboard.js")).send().await.unwrap();
    assert!(js.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    let js = js.text().await.unwrap();
    // The only URL in the script is the SVG namespace, which is a name, not a fetch.
    assert!(js.match_indices("http").all(|(i, _)| js[i..].starts_with("http://www.w3.org/2000/svg")), "{js}");
    assert!(!js.contains("import") && !js.contains("//cdn"), "{js}");
    assert!(js.match_indices("getJson(\"").all(|(i, _)| js[i + 9..].starts_with("/api/")), "same-origin API only");
    let css = http.get(served.url("/assets/dashboard.css")).send().await.unwrap().text().await.unwrap();
    for remote in ["http", "@import", "url("] {
        assert!(!css.contains(remote), "the stylesheet has {remote}");
    }
    db.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_button_asks_first_and_replay_topic_takes_one_topic() {
    let Some(db) = Db::new().await else { return };
    dead_letter(&db, "billing", "b1", "{}", "e").await;
    dead_letter(&db, "billing", "b2", "{}", "e").await;
    let mail = dead_letter(&db, "mail", "m1", "{}", "e").await;
    let served = Served::dashboard(&db, &["--token", TOKEN]).await;
    let http = client();
    let (cookie, csrf) = dashboard_support::login(&http, &served, TOKEN).await;
    let purge = served.url("/dead/purge");
    let before = counts(&db).await;
    assert_eq!(before.1, 3);

    // Purge on the list only shows what would go, and asks again.
    let ask = http.post(&purge).header("cookie", &cookie).form(&[("csrf", &*csrf), ("older_than", "0s")]);
    let ask = ask.send().await.unwrap();
    assert_eq!(ask.status(), StatusCode::OK);
    let page = ask.text().await.unwrap();
    assert!(page.contains("This deletes 3 dead letter(s) that died more than 0s ago, for good."), "{page}");
    assert!(page.contains("id=\"purge-confirm\"") && page.contains("id=\"purge-cancel\" href=\"/dead\""), "{page}");
    assert!(page.contains("name=\"confirm\" value=\"yes\"") && page.contains("name=\"older_than\" value=\"0s\""));
    assert_eq!(csrf_in(&page).as_deref(), Some(csrf.as_str()), "the confirmation carries the CSRF token");
    assert_eq!(counts(&db).await, before, "asking deleted nothing");
    // The prefilled 7d matches none of them: nothing to confirm.
    let none = http.post(&purge).header("cookie", &cookie).form(&[("csrf", &*csrf), ("older_than", "7d")]);
    let page = none.send().await.unwrap().text().await.unwrap();
    assert!(page.contains("there is nothing to purge") && !page.contains("purge-confirm"), "{page}");
    // No age, no purge; and the confirmation still needs the session's CSRF token.
    let empty = http.post(&purge).header("cookie", &cookie).form(&[("csrf", &*csrf), ("older_than", "")]);
    assert_eq!(empty.send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    let forged = http.post(&purge).header("cookie", &cookie).form(&[("older_than", "0s"), ("confirm", "yes")]);
    assert_eq!(forged.send().await.unwrap().status(), StatusCode::FORBIDDEN);
    let api = http.post(served.url("/api/dead/purge")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(api.status(), StatusCode::BAD_REQUEST, "the API names the age too");
    assert_eq!(counts(&db).await, before, "nothing deleted yet");

    // Replay topic: billing's two, not mail's.
    let replay = http
        .post(served.url("/dead/replay"))
        .header("cookie", &cookie)
        .form(&[("csrf", &*csrf), ("topic", "billing")])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::SEE_OTHER);
    let to = replay.headers()["location"].to_str().unwrap();
    assert!(to.contains("notice=Replayed%202%20") && to.ends_with("&topic=billing"), "{to}");
    assert_eq!(counts(&db).await, (before.0 + 2, 1));
    let left: Value = http.get(served.url("/api/dead")).send().await.unwrap().json().await.unwrap();
    assert_eq!(left[0]["id"], mail.to_string());

    // Confirmed, it purges.
    let confirm = http
        .post(&purge)
        .header("cookie", &cookie)
        .form(&[("csrf", &*csrf), ("older_than", "0s"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), StatusCode::SEE_OTHER);
    let to = confirm.headers()["location"].to_str().unwrap();
    assert!(to.starts_with("/dead?notice=Purged%201%20dead"), "{to}");
    assert_eq!(counts(&db).await, (before.0 + 2, 0));
    db.drop_table().await;
}

/// The overview, keys, dead-letter list, one dead letter, replay (one and by topic), purge and
/// the chart's published-row count, on `backend`.
async fn views_and_actions_on(backend: Backend) {
    let Some(db) = db_on(backend).await else { return };
    db.write("orders", 6, 2, 3).await;
    let billing = dead_letter(&db, "billing", "acct-1", r#"{"amount":12,"ok":true}"#, "broker said <no>").await;
    let mail = dead_letter(&db, "mail", "acct-2", "plain text", "timeout").await;
    let served = Served::dashboard(&db, &["--token", TOKEN]).await;
    let http = client();
    let get = |path: String| {
        let r = http.get(served.url(&path));
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            r.text().await.unwrap()
        }
    };

    let stats: Value = serde_json::from_str(&get("/api/stats".into()).await).unwrap();
    assert_eq!(
        (stats["pending"].as_u64(), stats["claimed"].as_u64(), stats["dead"].as_u64()),
        (Some(6), Some(0), Some(2))
    );
    let page = get("/".into()).await;
    assert!(page.contains("id=\"stat-pending\">6<") && page.contains("id=\"stat-dead\">2<"), "{page}");
    assert!(page.contains("<code>key-0</code>") && page.contains("<code>key-1</code>"), "{page}");
    let keys: Value = serde_json::from_str(&get("/api/keys".into()).await).unwrap();
    assert_eq!(keys.as_array().unwrap().iter().map(|k| k["pending"].as_u64().unwrap()).collect::<Vec<_>>(), [3, 3]);

    let list = get("/dead?topic=billing".into()).await;
    assert!(list.contains(&format!("data-id=\"{billing}\"")) && !list.contains(&mail.to_string()), "{list}");
    assert!(list.contains("broker said &lt;no&gt;"), "{list}");
    let all: Value = serde_json::from_str(&get("/api/dead".into()).await).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let one: Value = serde_json::from_str(&get(format!("/api/dead/{billing}")).await).unwrap();
    assert_eq!((one["payload_kind"].as_str(), one["last_error"].as_str()), (Some("json"), Some("broker said <no>")));
    assert_eq!(one["payload"], "{\n  \"amount\": 12,\n  \"ok\": true\n}");
    let shown = get(format!("/dead/{billing}")).await;
    assert!(shown.contains("id=\"payload\">{\n  &quot;amount&quot;: 12,\n  &quot;ok&quot;: true\n}</pre>"), "{shown}");
    assert!(shown.contains("id=\"last-error\">broker said &lt;no&gt;</pre>"), "{shown}");

    let replay = http.post(served.url(&format!("/api/dead/{billing}/replay"))).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(replay.json::<Value>().await.unwrap()["replayed"], 1);
    assert_eq!(counts(&db).await, (7, 1), "pending again");
    let gone = http.get(served.url(&format!("/api/dead/{billing}"))).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let topic = http.post(served.url("/api/dead/replay?topic=mail")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(topic.json::<Value>().await.unwrap()["replayed"], 1);
    dead_letter(&db, "mail", "acct-3", "x", "e").await;
    let purge = http.post(served.url("/api/dead/purge?older_than=0s")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(purge.json::<Value>().await.unwrap()["purged"], 1);
    assert_eq!(counts(&db).await, (8, 0));

    // Once the sampler runs, a message published (and kept) shows in the chart's count.
    let series = || async { serde_json::from_str::<Value>(&get("/api/series".into()).await).unwrap() };
    assert!(
        wait_until(Duration::from_secs(10), || async { !series().await["points"].as_array().unwrap().is_empty() })
            .await
    );
    published(&db, "orders").await;
    let counted = wait_until(Duration::from_secs(10), || async {
        let s = series().await;
        let points = s["points"].as_array().unwrap();
        s["source"] == "database"
            && points.iter().filter_map(|p| p["published"].as_u64()).sum::<u64>() == 1
            && points.last().unwrap()["pending"] == 8
    })
    .await;
    assert!(counted, "the chart counts the published row: {}", series().await);
    drop(served);
    drop_db(&db, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_actions_on_postgres() {
    views_and_actions_on(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_actions_on_mariadb() {
    views_and_actions_on(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_actions_on_sqlite() {
    views_and_actions_on(Backend::Sqlite).await;
}

#[test]
fn the_screenshots_in_the_docs_exist() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let text = std::fs::read_to_string(docs.join("cli.md")).unwrap();
    let links: Vec<&str> =
        text.match_indices("](img/").map(|(i, _)| &text[i + 2..i + 2 + text[i + 2..].find(')').unwrap()]).collect();
    assert_eq!(links.len(), 4, "{links:?}");
    for link in links {
        let png = std::fs::read(docs.join(link)).unwrap_or_else(|e| panic!("docs/{link}: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "docs/{link} is a PNG");
    }
}
