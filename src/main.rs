//! `audit-service`: the command line. `serve` (the default) runs the gRPC
//! service; `keys` manages API keys; `verify` checks a tenant's log against
//! its signed checkpoints; `export` writes a tenant's log to a file and
//! `verify-export` checks such a file offline; `retention apply` runs the
//! retention task now; `rollups rebuild` recomputes a tenant's rollups;
//! `tenants` lists the tenants registry and assigns partners; `token mint`
//! prints a bearer token for debugging.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use audit_service::auth::Scope;
use audit_service::cli::export::{self, ExportFormat};
use audit_service::cli::token;
use audit_service::cli::verify;
use audit_service::cli::verify_export::{self, ExportVerdict};
use audit_service::config::{DatabaseConfig, IntegrityConfig, JwtConfig, ServeConfig};
use audit_service::integrity::VerifierKey;
use audit_service::proto::{EventFilter, ExportRequest};
use audit_service::startup::signing_key::load_notary;
use audit_service::store::{KeyHolder, Store};
use audit_service::tenant::{PartnerId, TenantId};
use audit_service::{startup, telemetry};

/// mimalloc instead of the C library's allocator: a page of events is
/// ~1 300 short-lived strings, allocated on one thread and often freed on
/// another (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Multi-tenant gRPC audit-log service.
#[derive(Parser)]
#[command(name = "audit-service", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The database every command works on.
    #[command(flatten)]
    database: DatabaseConfig,
    /// Checkpoint signing, for `serve` and `verify`.
    #[command(flatten)]
    integrity: IntegrityConfig,
    /// Settings of `serve`, which runs when no command is given.
    #[command(flatten)]
    serve: ServeConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (the default).
    Serve(Box<ServeConfig>),
    /// Mint, list and revoke API keys in the configured database.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Recompute a tenant's Merkle tree from the database and check it
    /// against its signed checkpoints. Exit status: 0 intact, 2 tampered,
    /// 1 could not check.
    Verify(Box<VerifyArgs>),
    /// Write a tenant's log to a file from the database, chunk by chunk:
    /// NDJSON (the events with what proves them offline, for
    /// `verify-export`) or CSV (the events only). A progress bar is drawn
    /// when standard error is a terminal.
    Export(Box<ExportArgs>),
    /// Check an NDJSON export offline, with no database, against the
    /// service's verifier key. Exit status: 0 intact, 2 tampered (naming
    /// the first bad line), 1 could not check.
    VerifyExport(Box<VerifyExportArgs>),
    /// The retention task, run now from the command line.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// The rollups `Stats` and `GetFilterMetadata` are answered from.
    Rollups {
        #[command(subcommand)]
        command: RollupsCommand,
    },
    /// The tenants registry: every tenant from its first append on, and
    /// the partner each belongs to (platform keys and tokens limited to a
    /// partner read only its tenants).
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Bearer tokens for debugging.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print an HS256 bearer token signed with AUDIT_JWT_SECRET (with
    /// AUDIT_JWT_ISSUER, AUDIT_JWT_AUDIENCE and AUDIT_JWT_KEY_ID when set),
    /// for debugging with grpcurl; at most 24h long. Refuses without a
    /// secret.
    Mint(MintArgs),
}

#[derive(clap::Args)]
struct MintArgs {
    /// Tenant the token acts for (`tenant_id`).
    #[arg(long)]
    tenant: String,
    /// Scope to grant (repeat): audit:read, audit:append, audit:write, audit:admin.
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    /// Lifetime: 90s, 30m, 1h (at most 24h).
    #[arg(long, default_value = "1h", value_parser = token::parse_ttl)]
    ttl: std::time::Duration,
    /// The token's subject (`sub`), recorded as the actor of what it does.
    #[arg(long = "sub", default_value = "debug")]
    subject: String,
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// List every tenant: its id, partner (`-` for none) and when the
    /// registry first saw it.
    List,
    /// Assign a tenant to a partner (replacing any partner it had).
    SetPartner {
        /// The tenant.
        tenant: String,
        /// The partner.
        partner: String,
    },
    /// Take a tenant out of its partner.
    ClearPartner {
        /// The tenant.
        tenant: String,
    },
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Erase now what the tenants' retention periods make due (what every
    /// replica of `serve` does each --retention-interval-secs), printing
    /// what each tenant's run erased. Safe beside running replicas. Exit
    /// status: 0 when every tenant's run went through, 1 when one failed
    /// (named on stderr; the next run continues it).
    Apply,
}

#[derive(Subcommand)]
enum RollupsCommand {
    /// Recompute a tenant's rollups from its live events, in one
    /// transaction that holds the tenant's appends, deletions and retention
    /// out until it commits (other tenants go on). Safe beside running
    /// replicas. Prints the rows before and after and the events counted.
    Rebuild {
        /// Tenant whose rollups to rebuild.
        #[arg(long)]
        tenant: String,
    },
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// Tenant whose log to check.
    #[arg(long)]
    tenant: String,
    /// A checkpoint note saved earlier (from GetCheckpoint's `note`): the
    /// log must still extend it.
    #[arg(long)]
    checkpoint: Option<std::path::PathBuf>,
    /// The verifier key (`<name>+<hash>+<key>`) to check signatures with;
    /// by default the key of the configured signer. Pass the key you pinned
    /// to catch a signer replaced in the database.
    #[arg(long = "verifier-key")]
    verifier_key: Option<String>,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Tenant whose log to export.
    #[arg(long)]
    tenant: String,
    /// Filter expression (the syntax of `EventFilter.expression`): matching
    /// events are written whole; the other seqs are covered by subtree
    /// hashes (NDJSON) or left out (CSV). Erased events are always written,
    /// as erased.
    #[arg(long)]
    filter: Option<String>,
    /// Export the events after this seq (0: from the start). To resume an
    /// interrupted NDJSON export, its last chunk line's `resumeAfterSeq`;
    /// to continue a finished one later, its header's `treeSize`.
    #[arg(long = "after-seq", default_value_t = 0)]
    after_seq: u64,
    /// The file format.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// The file to write (created, or truncated); standard output when absent.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args)]
struct VerifyExportArgs {
    /// The NDJSON export to check.
    file: PathBuf,
    /// The verifier key (`<name>+<hash>+<key>`) of the service that wrote
    /// the export, pinned out of band (GetCheckpoint's `verifier_key`, or
    /// what `export` printed), never the one the file names.
    #[arg(long)]
    key: String,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Mint a key for one tenant, or a platform key; the key is printed
    /// once, alone on the last line.
    Create {
        /// Tenant the key acts for.
        #[arg(long, required_unless_present = "platform", conflicts_with = "platform")]
        tenant: Option<String>,
        /// A platform administrator's key: it reads across tenants with
        /// `x-tenant-id: *` (with audit:admin and audit:read) and the
        /// platform's own log with `x-tenant-id: _platform`; it never
        /// writes.
        #[arg(long)]
        platform: bool,
        /// Limit the platform key to the tenants of this partner.
        #[arg(long, requires = "platform")]
        partner: Option<String>,
        /// Scope to grant (repeat): audit:read, audit:append, audit:write, audit:admin.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List a tenant's keys, or the platform keys (never their secrets).
    List {
        /// Tenant whose keys to list.
        #[arg(long, required_unless_present = "platform", conflicts_with = "platform")]
        tenant: Option<String>,
        /// List the platform keys.
        #[arg(long)]
        platform: bool,
    },
    /// Revoke a key at once.
    Revoke {
        /// Key id, as `keys list` shows it.
        id: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    audit_service::store::tune_process();
    telemetry::init();
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let (database, integrity) = (cli.database, cli.integrity);
    let serve_with = |mut config: ServeConfig| {
        config.database = database.clone();
        config.integrity = integrity.clone();
        config
    };
    let result = match cli.command {
        None => serve(serve_with(cli.serve)).await,
        Some(Command::Serve(config)) => serve(serve_with(*config)).await,
        Some(Command::Keys { command }) => keys(database, command).await,
        Some(Command::Verify(args)) => run_verify(*args, database, integrity).await,
        Some(Command::Export(args)) => run_export(*args, database, integrity).await,
        Some(Command::VerifyExport(args)) => run_verify_export(&args),
        Some(Command::Retention {
            command: RetentionCommand::Apply,
        }) => apply_retention(database).await,
        Some(Command::Rollups {
            command: RollupsCommand::Rebuild { tenant },
        }) => rebuild_rollups(database, &tenant).await,
        Some(Command::Tenants { command }) => tenants(database, command).await,
        Some(Command::Token {
            command: TokenCommand::Mint(args),
        }) => mint_token(&cli.serve.jwt, args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, refusing `serve`'s own settings given before another
/// command (`audit-service --listen X keys list`), which that command would
/// otherwise ignore without a word. The database and signing options are
/// global: they apply to every command, before or after its name.
fn parse_command_line() -> Result<Cli, clap::Error> {
    use clap::{Args as _, CommandFactory as _, FromArgMatches as _};
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(std::env::args_os())?;
    if let Some((name, _)) = matches.subcommand()
        && name != "serve"
    {
        let serve_only = ServeConfig::augment_args(clap::Command::new("serve"));
        for arg in serve_only.get_arguments() {
            if matches.value_source(arg.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine) {
                let flag = arg
                    .get_long()
                    .map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"));
                return Err(command.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("{flag} is a setting of `serve`; `{name}` does not use it"),
                ));
            }
        }
    }
    Cli::from_arg_matches(&matches)
}

async fn keys(database: DatabaseConfig, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&database).await?;
    let result = run_keys(&store, command).await;
    store.close().await?;
    result.map(|()| ExitCode::SUCCESS)
}

async fn tenants(database: DatabaseConfig, command: TenantsCommand) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&database).await?;
    let result = run_tenants(&store, command).await;
    store.close().await?;
    result.map(|()| ExitCode::SUCCESS)
}

async fn run_tenants(store: &Store, command: TenantsCommand) -> anyhow::Result<()> {
    match command {
        TenantsCommand::List => {
            let tenants = store.list_tenants().await?;
            println!("{:<40}  {:<40}  CREATED", "TENANT", "PARTNER");
            for tenant in tenants {
                println!(
                    "{:<40}  {:<40}  {}",
                    tenant.tenant,
                    tenant.partner.as_ref().map_or("-", PartnerId::as_str),
                    time(Some(tenant.created_at)),
                );
            }
        }
        TenantsCommand::SetPartner { tenant, partner } => {
            let tenant = TenantId::parse(&tenant, "TENANT")?;
            let partner = PartnerId::parse(&partner, "PARTNER")?;
            let info = store.set_partner(&tenant, Some(&partner)).await?;
            println!("Tenant {} now belongs to partner {partner}.", info.tenant);
        }
        TenantsCommand::ClearPartner { tenant } => {
            let tenant = TenantId::parse(&tenant, "TENANT")?;
            let info = store.set_partner(&tenant, None).await?;
            println!("Tenant {} now belongs to no partner.", info.tenant);
        }
    }
    Ok(())
}

async fn apply_retention(database: DatabaseConfig) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&database).await?;
    let pass = startup::retention::run_once(&store, &CancellationToken::new()).await;
    store.close().await?;
    let pass = pass?;
    for (tenant, run) in &pass.runs {
        match &run.event {
            Some(event) => println!(
                "tenant {tenant}: erased {} events; run recorded at seq {}",
                run.erased, event.seq
            ),
            None => println!("tenant {tenant}: erased {} events", run.erased),
        }
    }
    for (tenant, error) in &pass.failed {
        eprintln!("tenant {tenant}: retention failed: {error}");
    }
    Ok(if pass.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn rebuild_rollups(database: DatabaseConfig, tenant: &str) -> anyhow::Result<ExitCode> {
    let tenant = TenantId::parse(tenant, "--tenant")?;
    let store = Store::connect(&database).await?;
    let rebuilt = store.rebuild_rollups(&tenant).await;
    store.close().await?;
    let rebuilt = rebuilt?;
    println!(
        "tenant {tenant}: rollups rebuilt: {} rows (were {}) counting {} live events",
        rebuilt.rows_after, rebuilt.rows_before, rebuilt.events
    );
    Ok(ExitCode::SUCCESS)
}

fn mint_token(jwt: &JwtConfig, args: MintArgs) -> anyhow::Result<ExitCode> {
    let request = token::MintRequest {
        tenant: args.tenant,
        scopes: args.scopes,
        ttl: args.ttl,
        subject: args.subject,
    };
    let (token, expires_at) = token::mint(jwt, &request)?;
    eprintln!(
        "A bearer token for debugging (grpcurl): tenant {}, scopes {}, sub {}, expires at {}. \
         Give production clients tokens from your identity provider.",
        request.tenant,
        request.scopes.join(" "),
        request.subject,
        time(
            i64::try_from(expires_at)
                .ok()
                .and_then(|s| s.checked_mul(1_000_000))
        )
    );
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// Exit status of `verify` when it finds evidence of tampering.
const TAMPERED: u8 = 2;

async fn run_verify(
    args: VerifyArgs,
    database: DatabaseConfig,
    integrity: IntegrityConfig,
) -> anyhow::Result<ExitCode> {
    let tenant = TenantId::parse(&args.tenant, "--tenant")?;
    let saved = match &args.checkpoint {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let store = Store::connect(&database).await?;
    let notary = load_notary(&integrity, &store).await?;
    let verifier = match &args.verifier_key {
        Some(text) => VerifierKey::parse(text)?,
        None => notary.verifier(),
    };
    let report = verify::verify(
        &store,
        &tenant,
        &notary.origin_of(&tenant),
        &verifier,
        saved.as_deref(),
    )
    .await;
    store.close().await?;
    let report = report?;
    println!("tenant {tenant}: {} events read", report.events);
    for (size, matched) in &report.checkpoints {
        let verdict = if *matched { "matches" } else { "DOES NOT MATCH" };
        println!("checkpoint of {size} events: root {verdict}");
    }
    if report.is_clean() {
        println!("OK: the log is intact and consistent with every checkpoint");
        return Ok(ExitCode::SUCCESS);
    }
    match report.first_bad_seq() {
        Some(seq) => println!("TAMPERED: first bad seq {seq}"),
        None => println!("TAMPERED"),
    }
    for problem in &report.problems {
        match problem.seq {
            Some(seq) => println!("  seq {seq}: {}", problem.what),
            None => println!("  {}", problem.what),
        }
    }
    Ok(ExitCode::from(TAMPERED))
}

async fn run_export(
    args: ExportArgs,
    database: DatabaseConfig,
    integrity: IntegrityConfig,
) -> anyhow::Result<ExitCode> {
    let tenant = TenantId::parse(&args.tenant, "--tenant")?;
    let request = ExportRequest {
        filter: Some(EventFilter {
            expression: args.filter.clone().unwrap_or_default(),
            ..Default::default()
        }),
        after_seq: args.after_seq,
        from_tenant_id: String::new(),
    };
    let store = Store::connect(&database).await?;
    let notary = load_notary(&integrity, &store).await?;
    let written = async {
        let mut out: Box<dyn Write> = match &args.output {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
            )),
            None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        };
        let progress = export::progress_bar();
        export::export(
            store.clone(),
            &notary,
            tenant.clone(),
            request,
            args.format,
            &mut out,
            &progress,
        )
        .await
    }
    .await;
    store.close().await?;
    let report = written?;
    eprintln!(
        "exported tenant {tenant}: {}, {} events whole and {} erased",
        seq_range(report.after_seq, report.tree_size),
        report.events,
        report.erased
    );
    if args.format == ExportFormat::Ndjson {
        eprintln!(
            "check it offline with: audit-service verify-export FILE --key {}",
            report.verifier_key
        );
    }
    eprintln!(
        "the next export can continue with --after-seq {}",
        report.tree_size
    );
    Ok(ExitCode::SUCCESS)
}

fn run_verify_export(args: &VerifyExportArgs) -> anyhow::Result<ExitCode> {
    let key = VerifierKey::parse(&args.key).context("--key")?;
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let verdict = verify_export::verify_export(std::io::BufReader::new(file), &key)
        .with_context(|| format!("cannot check {}", args.file.display()))?;
    match verdict {
        ExportVerdict::Intact(summary) => {
            println!(
                "export of tenant {} (log {}), {}, filter: {}",
                summary.tenant,
                summary.origin,
                seq_range(summary.after_seq, summary.tree_size),
                summary.filter.as_deref().unwrap_or("none")
            );
            println!(
                "{} whole events (leaves recomputed), {} erased (shown, not proved), {} seqs covered by subtree hashes",
                summary.whole, summary.erased, summary.skipped
            );
            println!(
                "OK: every whole event is in the log signed at tree size {}, unchanged, at its seq (root {}, signed by key {} at {})",
                summary.tree_size,
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, summary.root),
                key.name(),
                time(Some(summary.signed_at_micros))
            );
            Ok(ExitCode::SUCCESS)
        }
        ExportVerdict::Tampered { line, what } => {
            println!("TAMPERED: line {line}: {what}");
            Ok(ExitCode::from(TAMPERED))
        }
    }
}

/// The seqs an export after `after_seq` up to `tree_size` covers, in words.
fn seq_range(after_seq: u64, tree_size: u64) -> String {
    if after_seq >= tree_size {
        format!("no seqs (after seq {after_seq}, the head)")
    } else {
        format!("seqs {}..={tree_size}", after_seq + 1)
    }
}

async fn run_keys(store: &Store, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            tenant,
            platform,
            partner,
            scopes,
        } => {
            let holder = match (tenant, platform) {
                (Some(tenant), false) => KeyHolder::Tenant(TenantId::parse(&tenant, "--tenant")?),
                (None, true) => KeyHolder::Platform {
                    partner: partner.map(|p| PartnerId::parse(&p, "--partner")).transpose()?,
                },
                _ => anyhow::bail!("give either --tenant T or --platform"),
            };
            for scope in &scopes {
                if Scope::parse(scope).is_none() {
                    anyhow::bail!(
                        "unknown scope {scope:?}: expected audit:read, audit:append, audit:write or audit:admin"
                    );
                }
            }
            let (info, key) = store.create_key(holder, &scopes).await?;
            let holder = match (info.platform, &info.partner) {
                (false, _) => format!("tenant {}", info.tenant),
                (true, None) => "the platform (every tenant)".to_owned(),
                (true, Some(partner)) => format!("the platform, limited to partner {partner}"),
            };
            println!(
                "Created API key {} for {holder} with scopes {}.",
                info.id,
                info.scopes.join(" ")
            );
            println!("This is the only time the key is shown; store it now:");
            println!("{key}");
        }
        KeysCommand::List { tenant, platform } => {
            let tenant = match (tenant, platform) {
                (Some(tenant), false) => TenantId::parse(&tenant, "--tenant")?,
                (None, true) => TenantId::platform(),
                _ => anyhow::bail!("give either --tenant T or --platform"),
            };
            let keys = store.list_api_keys(&tenant).await?;
            println!(
                "{:<36}  {:<20}  {:<38}  {:<20}  {:<20}  REVOKED",
                "ID", "TENANT", "SCOPES", "CREATED", "LAST USED"
            );
            for key in keys {
                println!(
                    "{:<36}  {:<20}  {:<38}  {:<20}  {:<20}  {}",
                    key.id,
                    key.tenant,
                    key.scopes.join(","),
                    time(Some(key.created_at)),
                    time(key.last_used_at),
                    time(key.revoked_at),
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let id = uuid::Uuid::parse_str(&id).map_err(|_| anyhow::anyhow!("{id:?} is not a key id"))?;
            let key = store.revoke_api_key(id).await?;
            println!("Revoked API key {} of tenant {}.", key.id, key.tenant);
        }
    }
    Ok(())
}

/// A unix-microsecond time as RFC 3339 (seconds), or `-`.
fn time(micros: Option<i64>) -> String {
    micros
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

async fn serve(config: ServeConfig) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    startup::run(config, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("Ctrl-C received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
