//! Store contract, continued (every backend): each client's OS push tokens.
//! Registering again renews (no duplicate), at most `MAX_PUSH_TOKENS` are
//! kept (the oldest go), a token lives `PUSH_TOKEN_TTL_MS` after its last
//! registration, removal is per provider and token, clients are apart.

use std::sync::Arc;

use duplex_store::{PushProvider, PushToken, Store, MAX_PUSH_TOKENS, PUSH_TOKEN_TTL_MS};

const NOW: u64 = 1_800_000_000_000;

fn token(provider: PushProvider, token: &str, app: Option<&str>, at: u64) -> PushToken {
    PushToken {
        provider,
        token: token.to_owned(),
        app: app.map(str::to_owned),
        registered_ms: at,
    }
}

async fn tokens_are_kept_renewed_bounded_and_removed(store: Arc<dyn Store>) {
    let c = "phone-tokens";
    assert!(store.push_tokens(c, NOW).await.expect("read").is_empty());
    let fcm = token(PushProvider::Fcm, "fcm-token-1", Some("com.example.app"), NOW);
    let apns = token(PushProvider::Apns, "a1b2c3d4", None, NOW + 1);
    store.register_push_token(c, &fcm).await.expect("register");
    store.register_push_token(c, &apns).await.expect("register");
    assert_eq!(
        store.push_tokens(c, NOW + 2).await.expect("read"),
        vec![apns.clone(), fcm.clone()]
    );
    // The same token again: renewed in place, its app updated.
    let renewed = token(PushProvider::Fcm, "fcm-token-1", Some("com.example.other"), NOW + 5);
    store.register_push_token(c, &renewed).await.expect("renew");
    assert_eq!(
        store.push_tokens(c, NOW + 6).await.expect("read"),
        vec![renewed.clone(), apns.clone()]
    );
    // The same string under another provider is another token.
    let webpush = token(PushProvider::Webpush, "fcm-token-1", None, NOW + 7);
    store.register_push_token(c, &webpush).await.expect("register");
    assert_eq!(store.push_tokens(c, NOW + 8).await.expect("read").len(), 3);
    assert!(store
        .remove_push_token(c, PushProvider::Webpush, "fcm-token-1")
        .await
        .expect("remove"));
    assert!(!store
        .remove_push_token(c, PushProvider::Webpush, "fcm-token-1")
        .await
        .expect("remove again"));
    assert_eq!(
        store.push_tokens(c, NOW + 9).await.expect("read"),
        vec![renewed.clone(), apns.clone()]
    );
    // Another client sees none of them.
    assert!(store
        .push_tokens("phone-other", NOW + 9)
        .await
        .expect("read")
        .is_empty());
    // A token not renewed for its life is gone.
    assert_eq!(
        store.push_tokens(c, NOW + 1 + PUSH_TOKEN_TTL_MS).await.expect("read"),
        vec![renewed.clone()]
    );
}

async fn the_oldest_tokens_go_beyond_the_bound(store: Arc<dyn Store>) {
    let c = "phone-many";
    for i in 0..(MAX_PUSH_TOKENS as u64 + 3) {
        store
            .register_push_token(c, &token(PushProvider::Fcm, &format!("t{i}"), None, NOW + i))
            .await
            .expect("register");
    }
    let kept = store.push_tokens(c, NOW + 100).await.expect("read");
    assert_eq!(kept.len(), MAX_PUSH_TOKENS);
    let newest = MAX_PUSH_TOKENS as u64 + 2;
    assert_eq!(kept[0].token, format!("t{newest}"));
    assert_eq!(kept[MAX_PUSH_TOKENS - 1].token, "t3", "t0, t1, t2 went");
}

async fn a_fallback_note_shows_in_the_message_status(store: Arc<dyn Store>) {
    let c = "phone-noted";
    let msg = duplex_testkit::message(b"hi", NOW, NOW + 60_000);
    let limits = duplex_store::QueueLimits {
        max_messages: 10,
        max_bytes: 10_000,
    };
    let (seq, id) = match store.enqueue(c, &msg, limits, NOW).await.expect("enqueue") {
        duplex_store::Enqueued::Stored { seq, msg_id, .. } => (seq, msg_id),
        other => panic!("expected Stored, got {other:?}"),
    };
    let nonce = duplex_store::parse_message_id(&id).expect("ours").2;
    let before = store
        .message_status(c, seq, nonce, NOW)
        .await
        .expect("status")
        .expect("known");
    assert_eq!((before.fallback_at, before.fallback), (None, None));
    store
        .note_fallback(c, seq, "fcm:sent,apns:dead_token", NOW + 5)
        .await
        .expect("note");
    let after = store
        .message_status(c, seq, nonce, NOW + 6)
        .await
        .expect("status")
        .expect("known");
    assert_eq!(after.fallback_at, Some(NOW + 5));
    assert_eq!(after.fallback.as_deref(), Some("fcm:sent,apns:dead_token"));
    // Still queued: the note is beside the state, not instead of it.
    assert_eq!(after.state, duplex_store::MessageState::Queued);
}

duplex_testkit::store_contract!(
    a_fallback_note_shows_in_the_message_status,
    tokens_are_kept_renewed_bounded_and_removed,
    the_oldest_tokens_go_beyond_the_bound,
);
