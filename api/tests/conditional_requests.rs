//! Conditional requests (RFC 9110 §13) as clients make them: `If-Match` on writes and reads,
//! `If-None-Match` on writes (on reads, with the cache, in `hardening.rs` and `hit_path.rs`), and
//! both on writes of what has no entity tag (sub-actions, links, tokens).

mod common;

use common::{assert_problem, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn writes_with_a_stale_if_match_are_refused_412_with_the_current_tag_and_a_change_answers_with_the_next_one() {
    let app = spawn_app().await;
    let token = &app.a.analyst;
    let paths = app.create_risk_mitigation_and_asset("Conditional").await;
    for (path, change) in [
        (&paths.mitigation, json!({"progress": 10})),
        (&paths.asset, json!({"owner": "o"})),
        (&paths.risk, json!({"impact": 5})),
    ] {
        let read = app.etag(path).await;
        let conditional = |tag: &str| app.request(Method::PATCH, path, token).header("if-match", tag).json(&change);
        let changed = conditional(&read).send().await.unwrap();
        assert_eq!(changed.status(), StatusCode::OK, "{path}");
        let next = changed.headers().get("etag").map(|tag| tag.to_str().unwrap().to_owned());
        assert_eq!(next, Some(app.etag(path).await), "a change answers with the tag a GET of {path} now has");
        let stale = conditional(&read).send().await.unwrap();
        let current = stale.headers().get("etag").map(|tag| tag.to_str().unwrap().to_owned());
        assert_problem(stale, StatusCode::PRECONDITION_FAILED).await;
        assert_eq!(current, Some(app.etag(path).await), "412 names the current tag of {path}");
        let weak = format!("W/{}", app.etag(path).await);
        assert_eq!(conditional(&weak).send().await.unwrap().status(), StatusCode::PRECONDITION_FAILED);
        let current = app.etag(path).await;
        let two_lines = conditional(&read).header("if-match", &current).send().await.unwrap();
        assert_eq!(two_lines.status(), StatusCode::OK, "two If-Match lines are one list, the second current");
        assert_eq!(conditional("*").send().await.unwrap().status(), StatusCode::OK);

        let delete = |tag: &str| app.request(Method::DELETE, path, token).header("if-match", tag.to_owned()).send();
        assert_eq!(delete(&read).await.unwrap().status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(app.get(path, token).await.status(), StatusCode::OK, "a refused delete deletes nothing");
        assert_eq!(delete(&app.etag(path).await).await.unwrap().status(), StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn a_read_whose_if_match_fails_and_a_write_whose_if_none_match_holds_are_refused_412() {
    let app = spawn_app().await;
    let (viewer, analyst) = (&app.a.viewer, &app.a.analyst);
    let paths = app.create_risk_mitigation_and_asset("Preconditions").await;
    let status = async |method: Method, path: &str, token: &str, conditions: &[(&str, &str)]| {
        let request = conditions
            .iter()
            .fold(app.request(method, path, token), |request, (name, value)| request.header(*name, *value));
        let response = request.send().await.unwrap();
        let etag = response.headers().get("etag").map(|tag| tag.to_str().unwrap().to_owned());
        (response.status(), etag)
    };
    // A list the hit path answers, one left to the router (an encoded parameter), and resources
    // read once already (so hits), by GET and by HEAD (which the router answers).
    let reads = ["/api/v1/risks?limit=20", "/api/v1/risks?limit=%320", &paths.risk, &paths.mitigation, &paths.asset];
    for (path, method) in reads.iter().flat_map(|path| [(path, Method::GET), (path, Method::HEAD)]) {
        let current = app.etag(path).await;
        let weak = format!("W/{current}");
        for (conditions, expected) in [
            (vec![("if-match", "\"stale\"")], StatusCode::PRECONDITION_FAILED),
            (vec![("if-match", weak.as_str())], StatusCode::PRECONDITION_FAILED),
            (vec![("if-match", current.as_str())], StatusCode::OK),
            (vec![("if-match", "*")], StatusCode::OK),
            (vec![("if-match", "\"stale\""), ("if-match", current.as_str())], StatusCode::OK),
            (vec![("if-match", current.as_str()), ("if-none-match", current.as_str())], StatusCode::NOT_MODIFIED),
            (vec![("if-match", "\"stale\""), ("if-none-match", current.as_str())], StatusCode::PRECONDITION_FAILED),
        ] {
            let (answered, etag) = status(method.clone(), path, viewer, &conditions).await;
            assert_eq!(answered, expected, "{method} {path} with {conditions:?}");
            assert_eq!(etag.as_ref(), Some(&current), "{method} {path} with {conditions:?} names the current tag");
        }
    }
    // A read without an entity tag matches only `*`.
    let (tokens, etag) = status(Method::GET, "/api/v1/tokens", &app.a.admin, &[("if-match", "\"stale\"")]).await;
    assert_eq!((tokens, etag), (StatusCode::PRECONDITION_FAILED, None));
    let (tokens, _) = status(Method::GET, "/api/v1/tokens", &app.a.admin, &[("if-match", "*")]).await;
    assert_eq!(tokens, StatusCode::OK);

    for (path, change) in [
        (&paths.mitigation, json!({"progress": 10})),
        (&paths.asset, json!({"owner": "o"})),
        (&paths.risk, json!({"impact": 5})),
    ] {
        let current = app.etag(path).await;
        for if_none_match in ["*", current.as_str(), &format!("\"other\", W/{current}")] {
            let refused =
                app.request(Method::PATCH, path, analyst).header("if-none-match", if_none_match).json(&change);
            let refused = refused.send().await.unwrap();
            assert_eq!(refused.headers().get("etag").map(|tag| tag.to_str().unwrap()), Some(current.as_str()));
            let problem = assert_problem(refused, StatusCode::PRECONDITION_FAILED).await;
            assert!(problem["detail"].as_str().unwrap().contains("If-None-Match"), "{problem}");
            let (deleted, _) = status(Method::DELETE, path, analyst, &[("if-none-match", if_none_match)]).await;
            assert_eq!(deleted, StatusCode::PRECONDITION_FAILED, "DELETE {path} If-None-Match: {if_none_match}");
        }
        assert_eq!(app.etag(path).await, current, "a refused write changes nothing");
        let other = [("if-none-match", "\"other\"")];
        let changed = app.request(Method::PATCH, path, analyst).header(other[0].0, other[0].1).json(&change);
        assert_eq!(changed.send().await.unwrap().status(), StatusCode::OK, "PATCH {path} naming another tag");
        assert_eq!(status(Method::DELETE, path, analyst, &other).await.0, StatusCode::NO_CONTENT, "{path}");
    }
}

#[tokio::test]
async fn writes_of_sub_actions_links_and_tokens_which_have_no_tag_hold_only_for_a_star() {
    let app = spawn_app().await;
    let (analyst, admin) = (&app.a.analyst, &app.a.admin);
    let paths = app.create_risk_mitigation_and_asset("Untagged").await;
    let send = async |method: Method, path: &str, token: &str, condition: (&str, &str), body: Option<Value>| {
        let request = app.request(method, path, token).header(condition.0, condition.1);
        let response = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let response = response.send().await.unwrap();
        (response.status(), response.headers().get("etag").is_some())
    };
    let refused = (StatusCode::PRECONDITION_FAILED, false);
    let mitigation_tag = app.etag(&paths.mitigation).await;

    let subactions = format!("{}/subactions", paths.mitigation);
    let subaction = app.create_subaction(analyst, &paths.mitigation, "S").await;
    let title = json!({"title": "T"});
    let stored =
        async || app.count("SELECT count(*) FROM mitigation_subactions WHERE title = 'S' AND NOT completed").await;
    for condition in [("if-match", mitigation_tag.as_str()), ("if-match", "\"x\""), ("if-none-match", "*")] {
        assert_eq!(
            send(Method::PATCH, &subaction, analyst, condition, Some(title.clone())).await,
            refused,
            "{condition:?}"
        );
        let toggle = format!("{subaction}/toggle");
        assert_eq!(send(Method::POST, &toggle, analyst, condition, None).await, refused, "{condition:?}");
        assert_eq!(send(Method::DELETE, &subaction, analyst, condition, None).await, refused, "{condition:?}");
        assert_eq!(stored().await, 1, "a refused write of a sub-action changes nothing ({condition:?})");
    }
    // A create targets its collection: risks, assets and tokens have one with a `GET` (whose tag
    // is not compared), a risk's mitigations and a mitigation's sub-actions have none.
    let listed = app.etag("/api/v1/risks").await;
    let creates = [
        (subactions.as_str(), analyst, json!({"title": "S2"}), false),
        (&format!("{}/mitigations", paths.risk), analyst, json!({"title": "M2"}), false),
        ("/api/v1/risks", analyst, json!({"title": "R2", "impact": 1, "probability": 1}), true),
        ("/api/v1/assets", analyst, json!({"name": "A2", "asset_type": "server", "criticality": "LOW"}), true),
        ("/api/v1/tokens", admin, json!({"role": "viewer"}), true),
    ];
    for (collection, token, body, has_a_get) in &creates {
        let (holds, fails) = if *has_a_get {
            (("if-match", "*"), ("if-none-match", "*"))
        } else {
            (("if-none-match", "*"), ("if-match", "*"))
        };
        for condition in [("if-match", "\"x\""), ("if-match", listed.as_str()), fails] {
            let answered = send(Method::POST, collection, token, condition, Some(body.clone())).await;
            assert_eq!(answered, refused, "POST {collection} {condition:?}");
        }
        let created = send(Method::POST, collection, token, holds, Some(body.clone())).await;
        assert_eq!(created.0, StatusCode::CREATED, "POST {collection} {holds:?}");
    }
    let made = "SELECT (SELECT count(*) FROM mitigation_subactions) + (SELECT count(*) FROM mitigations) \
                + (SELECT count(*) FROM risks) + (SELECT count(*) FROM assets)";
    assert_eq!(app.count(made).await, 2 + 2 + 2 + 2, "one of each was created, once");

    let changed = send(Method::PATCH, &subaction, analyst, ("if-match", "*"), Some(title)).await;
    assert_eq!(changed.0, StatusCode::OK);
    assert_eq!(
        send(Method::DELETE, &subaction, analyst, ("if-none-match", "\"x\""), None).await.0,
        StatusCode::NO_CONTENT
    );

    let link = format!("{}/assets/{}", paths.risk, common::id_of(&paths.asset));
    let linked = async || app.count("SELECT count(*) FROM risk_assets").await;
    assert_eq!(send(Method::PUT, &link, analyst, ("if-match", "*"), None).await, refused, "If-Match asks for a link");
    assert_eq!(linked().await, 0, "a refused link is rolled back");
    assert_eq!(send(Method::PUT, &link, analyst, ("if-none-match", "*"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(send(Method::PUT, &link, analyst, ("if-none-match", "*"), None).await, refused, "the link exists");
    assert_eq!(send(Method::PUT, &link, analyst, ("if-match", "*"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(send(Method::DELETE, &link, analyst, ("if-match", "\"x\""), None).await, refused);
    assert_eq!(linked().await, 1, "a refused unlink is rolled back");
    assert_eq!(send(Method::DELETE, &link, analyst, ("if-match", "*"), None).await.0, StatusCode::NO_CONTENT);

    let token = app.send_json(Method::POST, "/api/v1/tokens", admin, json!({"role": "viewer"})).await;
    let token: Value = token.json().await.unwrap();
    let revoke = format!("/api/v1/tokens/{}", token["id"].as_str().unwrap());
    let live = async || app.count("SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL").await;
    let before = live().await;
    for condition in [("if-match", "\"x\""), ("if-none-match", "*")] {
        assert_eq!(send(Method::DELETE, &revoke, admin, condition, None).await, refused, "{condition:?}");
    }
    assert_eq!(live().await, before, "a refused revocation revokes nothing");
    assert_eq!(send(Method::DELETE, &revoke, admin, ("if-match", "*"), None).await.0, StatusCode::NO_CONTENT);
    let gone = send(Method::DELETE, &revoke, admin, ("if-none-match", "*"), None).await;
    assert_eq!(gone.0, StatusCode::NOT_FOUND, "a token revoked is not there for a precondition to refuse");
}
