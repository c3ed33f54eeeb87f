//! Turns call metadata into a [`CallerIdentity`] in one tower layer, before
//! any handler runs. Handlers never read headers: they ask [`caller`] for the
//! identity and the scope their RPC needs.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::HeaderMap;
use tonic::Status;
use tower::{Layer, Service};

use crate::error::Error;
use crate::tenant::TenantId;

/// Metadata key naming the tenant a call acts for.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// Path prefixes of the services that need a credential; reflection and
/// health stay open.
const PROTECTED_SERVICES: &[&str] = &["/audit.v1.AuditService/"];

/// A permission a credential grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Query, Get, Stats, GetFilterMetadata, Watch.
    Read,
    /// Append.
    Append,
    /// Delete.
    Write,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Append, Scope::Write];

    /// The scope's name in credentials (`audit:read`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "audit:read",
            Scope::Append => "audit:append",
            Scope::Write => "audit:write",
        }
    }

    /// Parses a scope name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// No credential verification is configured for this server.
    Unverified,
    /// A bearer JWT.
    Jwt,
    /// An API key minted with `audit-service keys create`.
    ApiKey,
}

/// Who is calling, for which tenant, with which scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The tenant the call acts for (the credential's, equal to `x-tenant-id`).
    pub tenant: TenantId,
    /// The JWT `sub`, or the API key id.
    pub subject: String,
    /// Scopes the credential grants.
    pub scopes: Vec<Scope>,
    /// How the caller authenticated.
    pub kind: CredentialKind,
}

impl CallerIdentity {
    /// Ok when the credential grants `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(Error::MissingScope(scope.as_str()))
        }
    }

    /// The actor type the caller is recorded as in events the service writes
    /// on its behalf.
    pub fn actor_type(&self) -> crate::proto::ActorType {
        match self.kind {
            CredentialKind::ApiKey => crate::proto::ActorType::ApiKey,
            CredentialKind::Jwt => crate::proto::ActorType::User,
            CredentialKind::Unverified => crate::proto::ActorType::Unspecified,
        }
    }
}

/// The caller of `request`, if it holds `scope`.
pub fn caller<T>(request: &tonic::Request<T>, scope: Scope) -> Result<CallerIdentity, Error> {
    let identity = request
        .extensions()
        .get::<CallerIdentity>()
        .ok_or_else(|| Error::Unauthenticated("no caller identity on the request".into()))?;
    identity.require(scope)?;
    Ok(identity.clone())
}

/// The tenant named by `x-tenant-id`.
pub fn tenant_from_headers(headers: &HeaderMap) -> Result<TenantId, Error> {
    let Some(value) = headers.get(TENANT_HEADER) else {
        return Err(Error::TenantRequired);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::invalid(TENANT_HEADER, "must be printable ASCII"))?;
    if value.trim().is_empty() {
        return Err(Error::TenantRequired);
    }
    TenantId::parse(value, TENANT_HEADER)
}

/// Verifies the credentials of a call.
#[derive(Debug, Default)]
pub struct Authenticator {}

impl Authenticator {
    /// The identity of a call carrying `headers`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<CallerIdentity, Error> {
        let tenant = tenant_from_headers(headers)?;
        Ok(CallerIdentity {
            tenant,
            subject: "unverified".to_owned(),
            scopes: Scope::ALL.to_vec(),
            kind: CredentialKind::Unverified,
        })
    }
}

/// Tower layer that authenticates every call to a protected service.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer verifying with `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the router.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let path = request.uri().path();
            if PROTECTED_SERVICES.iter().any(|prefix| path.starts_with(prefix)) {
                match authenticator.authenticate(request.headers()).await {
                    Ok(identity) => {
                        request.extensions_mut().insert(identity);
                    }
                    Err(error) => return Ok(Status::from(error).into_http()),
                }
            }
            inner.call(request).await
        })
    }
}
