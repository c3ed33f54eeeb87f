//! `token mint`: an HS256 bearer token signed with the server's
//! `AUDIT_JWT_SECRET`, with the claims [`crate::auth::jwt`] accepts, for
//! debugging with grpcurl. Production clients get their tokens from an
//! identity provider; a minted token lives at most [`MAX_TTL`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::Scope;
use crate::auth::jwt::check_subject;
use crate::config::JwtConfig;
use crate::tenant::TenantId;

/// Longest lifetime `token mint` signs.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// `tenant_id`.
    pub tenant: String,
    /// `scope`, joined with spaces.
    pub scopes: Vec<String>,
    /// `exp` minus `iat`.
    pub ttl: Duration,
    /// `sub`.
    pub subject: String,
}

/// A token for `request` signed with `jwt`'s secret (and its issuer and
/// audience, when set), and its `exp` in unix seconds; refuses without a
/// secret, above [`MAX_TTL`], and with claims the server would refuse.
pub fn mint(jwt: &JwtConfig, request: &MintRequest) -> anyhow::Result<(String, u64)> {
    let secret = jwt
        .secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("AUDIT_JWT_SECRET is not set: there is no key to sign with"))?;
    TenantId::parse(&request.tenant, "--tenant")?;
    for scope in &request.scopes {
        if Scope::parse(scope).is_none() {
            anyhow::bail!(
                "unknown scope {scope:?}: expected audit:read, audit:append, audit:write or audit:admin"
            );
        }
    }
    check_subject(&request.subject).map_err(|why| anyhow::anyhow!("--sub {why}"))?;
    if request.ttl > MAX_TTL || request.ttl.is_zero() {
        anyhow::bail!(
            "--ttl must be more than 0 and at most 24h, got {}s",
            request.ttl.as_secs()
        );
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let expires_at = now + request.ttl.as_secs();
    let mut claims = serde_json::json!({
        "sub": request.subject,
        "tenant_id": request.tenant,
        "scope": request.scopes.join(" "),
        "iat": now,
        "exp": expires_at,
    });
    if let Some(issuer) = jwt.issuer.as_deref().filter(|s| !s.is_empty()) {
        claims["iss"] = issuer.into();
    }
    if let Some(audience) = jwt.audience.as_deref().filter(|s| !s.is_empty()) {
        claims["aud"] = audience.into();
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = jwt.key_id.clone().filter(|k| !k.is_empty());
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok((jsonwebtoken::encode(&header, &claims, &key)?, expires_at))
}

/// A lifetime such as `90s`, `30m`, `1h` or `3600` (seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a lifetime such as 90s, 30m or 1h"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(number.saturating_mul(unit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_in_seconds_minutes_and_hours() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("45"), Ok(Duration::from_secs(45)));
        assert!(parse_ttl("1d").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn refuses_without_a_secret_and_above_a_day() {
        let request = MintRequest {
            tenant: "acme".into(),
            scopes: vec!["audit:read".into()],
            ttl: Duration::from_secs(3600),
            subject: "debug".into(),
        };
        assert!(mint(&JwtConfig::default(), &request).is_err());
        let config = JwtConfig {
            secret: Some("s3cret-for-unit-tests".into()),
            ..Default::default()
        };
        assert!(mint(&config, &request).is_ok());
        let long = MintRequest {
            ttl: MAX_TTL + Duration::from_secs(1),
            ..request
        };
        assert!(mint(&config, &long).is_err());
    }
}
