//! Opaque, tamper-evident page tokens bound to the query that made them.
//!
//! Layout before base64url: `version (1) | seq (8) | occurred_at (8) |
//! query fingerprint (16) | HMAC-SHA256 of all that, truncated (16)`. The
//! HMAC key is a secret shared by the replicas through the database, so a
//! token made by one replica works on another and survives restarts.
//!
//! A page of a read across tenants ([`SpanCursor`]) continues after an
//! event of some tenant: `version 2 (1) | time (8) | seq (8) | query
//! fingerprint (16) | tenant id length (1) | tenant id | HMAC (16)`. Its
//! fingerprint binds the tenant set (the credential's partner and the
//! filter), so a token never moves to another set.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const FINGERPRINT_LEN: usize = 16;
const MAC_LEN: usize = 16;
const BODY_LEN: usize = 1 + 8 + 8 + FINGERPRINT_LEN;
const TOKEN_LEN: usize = BODY_LEN + MAC_LEN;

/// Where the previous page ended: the keyset cursor of the next page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    /// Seq of the last event returned.
    pub seq: i64,
    /// `occurred_at` (unix microseconds) of the last event returned.
    pub occurred_at: i64,
}

/// Version byte of the tokens of reads across tenants.
const SPAN_VERSION: u8 = 2;
/// Longest token of a read across tenants, in bytes before base64.
pub const MAX_SPAN_TOKEN_BYTES: usize = BODY_LEN + 1 + crate::tenant::MAX_TENANT_ID_LEN + MAC_LEN;

/// Where the previous page of a read across tenants ended: the keyset
/// cursor `(time, tenant, seq)` of the next page, `time` being
/// `recorded_at` or `occurred_at` as the order says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanCursor {
    /// `recorded_at` or `occurred_at` (unix microseconds) of the last event returned.
    pub at: i64,
    /// Its tenant.
    pub tenant: crate::tenant::TenantId,
    /// Its seq.
    pub seq: i64,
}

/// Identifies one query (tenant, filter, order) independently of paging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryFingerprint([u8; FINGERPRINT_LEN]);

impl QueryFingerprint {
    /// Fingerprint of a tenant's query: its order and its encoded filter.
    pub fn of(tenant: &str, order: &str, encoded_filter: &[u8]) -> Self {
        let mut hash = Sha256::new();
        for part in [tenant.as_bytes(), order.as_bytes(), encoded_filter] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        let digest = hash.finalize();
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        Self(fingerprint)
    }
}

/// Why a page token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    /// Not a token this service issued, or edited by hand.
    #[error("page token is malformed or was altered")]
    Invalid,
    /// Issued for a different filter or order_by.
    #[error("page token belongs to a different query: keep the filter and order_by of the first page")]
    OtherQuery,
}

/// The key that signs and checks page tokens.
#[derive(Clone)]
pub struct PageTokenKey(Arc<[u8]>);

impl PageTokenKey {
    /// A key from secret bytes.
    pub fn new(secret: Vec<u8>) -> Self {
        Self(secret.into())
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }

    /// A token for the page after `cursor` of the query `fingerprint`.
    pub fn issue(&self, fingerprint: QueryFingerprint, cursor: PageCursor) -> String {
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.push(VERSION);
        token.extend_from_slice(&cursor.seq.to_be_bytes());
        token.extend_from_slice(&cursor.occurred_at.to_be_bytes());
        token.extend_from_slice(&fingerprint.0);
        let mut mac = self.mac();
        mac.update(&token);
        token.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// A token for the page after `cursor` of the read across tenants
    /// `fingerprint`.
    pub fn issue_span(&self, fingerprint: QueryFingerprint, cursor: &SpanCursor) -> String {
        let tenant = cursor.tenant.as_str().as_bytes();
        let mut token = Vec::with_capacity(MAX_SPAN_TOKEN_BYTES);
        token.push(SPAN_VERSION);
        token.extend_from_slice(&cursor.at.to_be_bytes());
        token.extend_from_slice(&cursor.seq.to_be_bytes());
        token.extend_from_slice(&fingerprint.0);
        // A tenant id is at most 128 bytes.
        token.push(u8::try_from(tenant.len()).unwrap_or(u8::MAX));
        token.extend_from_slice(tenant);
        let mut mac = self.mac();
        mac.update(&token);
        token.extend_from_slice(&mac.finalize().into_bytes()[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The cursor in `token`, if this key issued it for the read across
    /// tenants `fingerprint`.
    pub fn open_span(
        &self,
        token: &str,
        fingerprint: QueryFingerprint,
    ) -> Result<SpanCursor, PageTokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| PageTokenError::Invalid)?;
        if bytes.len() < BODY_LEN + 1 + MAC_LEN || bytes[0] != SPAN_VERSION {
            return Err(PageTokenError::Invalid);
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| PageTokenError::Invalid)?;
        let tenant = &body[BODY_LEN + 1..];
        if usize::from(body[BODY_LEN]) != tenant.len() {
            return Err(PageTokenError::Invalid);
        }
        if body[17..BODY_LEN] != fingerprint.0 {
            return Err(PageTokenError::OtherQuery);
        }
        let word = |range: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[range]);
            i64::from_be_bytes(b)
        };
        let tenant = std::str::from_utf8(tenant).map_err(|_| PageTokenError::Invalid)?;
        Ok(SpanCursor {
            at: word(1..9),
            tenant: crate::tenant::TenantId::stored(tenant.to_owned()),
            seq: word(9..17),
        })
    }

    /// The cursor in `token`, if this key issued it for `fingerprint`.
    pub fn open(&self, token: &str, fingerprint: QueryFingerprint) -> Result<PageCursor, PageTokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| PageTokenError::Invalid)?;
        if bytes.len() != TOKEN_LEN || bytes[0] != VERSION {
            return Err(PageTokenError::Invalid);
        }
        let (body, tag) = bytes.split_at(BODY_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| PageTokenError::Invalid)?;
        if body[17..] != fingerprint.0 {
            return Err(PageTokenError::OtherQuery);
        }
        let word = |range: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[range]);
            i64::from_be_bytes(b)
        };
        Ok(PageCursor {
            seq: word(1..9),
            occurred_at: word(9..17),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PageTokenKey {
        PageTokenKey::new(vec![7; 32])
    }

    const CURSOR: PageCursor = PageCursor {
        seq: 1234,
        occurred_at: 1_700_000_000_000_000,
    };

    #[test]
    fn token_round_trips_for_the_same_query() {
        let query = QueryFingerprint::of("acme", "seq desc", b"filter");
        let token = key().issue(query, CURSOR);
        assert_eq!(key().open(&token, query), Ok(CURSOR));
    }

    #[test]
    fn token_of_another_query_is_refused() {
        let first = QueryFingerprint::of("acme", "seq desc", b"filter");
        let token = key().issue(first, CURSOR);
        for other in [
            QueryFingerprint::of("acme", "seq asc", b"filter"),
            QueryFingerprint::of("acme", "seq desc", b"other"),
            QueryFingerprint::of("other", "seq desc", b"filter"),
        ] {
            assert_eq!(key().open(&token, other), Err(PageTokenError::OtherQuery));
        }
    }

    #[test]
    fn every_edited_byte_is_detected() {
        let query = QueryFingerprint::of("acme", "seq desc", b"");
        let raw = URL_SAFE_NO_PAD.decode(key().issue(query, CURSOR)).unwrap();
        for i in 0..raw.len() {
            let mut edited = raw.clone();
            edited[i] ^= 0x01;
            let token = URL_SAFE_NO_PAD.encode(&edited);
            assert_eq!(
                key().open(&token, query),
                Err(PageTokenError::Invalid),
                "byte {i}"
            );
        }
    }

    #[test]
    fn token_of_another_key_and_garbage_are_refused() {
        let query = QueryFingerprint::of("acme", "seq desc", b"");
        let token = PageTokenKey::new(vec![8; 32]).issue(query, CURSOR);
        assert_eq!(key().open(&token, query), Err(PageTokenError::Invalid));
        for garbage in ["", "!!!", "AAAA", &"A".repeat(200)] {
            assert_eq!(key().open(garbage, query), Err(PageTokenError::Invalid));
        }
    }

    #[test]
    fn span_tokens_round_trip_bind_their_query_and_detect_edits() {
        let query = QueryFingerprint::of("*", "seq desc", b"filter");
        let cursor = SpanCursor {
            at: 1_700_000_000_000_000,
            tenant: crate::tenant::TenantId::parse("acme", "t").unwrap(),
            seq: 42,
        };
        let token = key().issue_span(query, &cursor);
        assert_eq!(key().open_span(&token, query), Ok(cursor.clone()));
        let partner = QueryFingerprint::of("*:p1", "seq desc", b"filter");
        assert_eq!(key().open_span(&token, partner), Err(PageTokenError::OtherQuery));
        // Neither kind of token opens as the other.
        assert_eq!(key().open(&token, query), Err(PageTokenError::Invalid));
        let single = key().issue(query, CURSOR);
        assert_eq!(key().open_span(&single, query), Err(PageTokenError::Invalid));
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..raw.len() {
            let mut edited = raw.clone();
            edited[i] ^= 0x01;
            let edited = URL_SAFE_NO_PAD.encode(&edited);
            assert_eq!(
                key().open_span(&edited, query),
                Err(PageTokenError::Invalid),
                "byte {i}"
            );
        }
        let longest = SpanCursor {
            tenant: crate::tenant::TenantId::parse(&"a".repeat(128), "t").unwrap(),
            ..cursor
        };
        let token = key().issue_span(query, &longest);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&token).unwrap().len(),
            MAX_SPAN_TOKEN_BYTES
        );
        assert_eq!(key().open_span(&token, query), Ok(longest));
    }

    #[test]
    fn length_prefixing_keeps_parts_apart() {
        assert_ne!(
            QueryFingerprint::of("ab", "c", b""),
            QueryFingerprint::of("a", "bc", b"")
        );
    }
}

/// Property tests: the decoder is fed arbitrary and mutated input.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn key() -> PageTokenKey {
        PageTokenKey::new(vec![42; 32])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_text_is_never_accepted(token in any::<String>()) {
            let query = QueryFingerprint::of("acme", "seq desc", b"");
            prop_assert!(key().open(&token, query).is_err());
        }

        #[test]
        fn arbitrary_bytes_of_token_length_are_never_accepted(bytes in proptest::collection::vec(any::<u8>(), TOKEN_LEN)) {
            let query = QueryFingerprint::of("acme", "seq desc", b"");
            prop_assert!(key().open(&URL_SAFE_NO_PAD.encode(bytes), query).is_err());
        }

        #[test]
        fn any_mutation_of_a_valid_token_is_refused(
            seq in any::<i64>(),
            occurred_at in any::<i64>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let query = QueryFingerprint::of("acme", "occurred_at asc", b"f");
            let cursor = PageCursor { seq, occurred_at };
            let token = key().issue(query, cursor);
            prop_assert_eq!(key().open(&token, query), Ok(cursor));
            let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
            for (index, flip) in edits {
                let i = index.index(raw.len());
                raw[i] ^= flip;
            }
            let edited = URL_SAFE_NO_PAD.encode(&raw);
            if edited != token {
                prop_assert!(key().open(&edited, query).is_err());
            }
        }
    }
}
