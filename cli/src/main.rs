//! `tenantai`: run the whole stack on a laptop (`tenantai dev`) and manage a
//! running instance through its admin API.

mod admin;
mod audit;
mod batches;
mod dev;
mod gdpr;
mod ops;
mod output;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tenantai", version, about = "Multi-tenant, OpenAI-compatible AI backend", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run api, admin, authorizer and an embeddings worker in one process.
    #[command(after_help = dev::LIMITS_HELP)]
    Dev(dev::DevArgs),
    /// Create, list, inspect and change tenants.
    #[command(subcommand)]
    Tenants(admin::TenantCmd),
    /// Create, list and revoke a tenant's API keys.
    #[command(subcommand)]
    Keys(admin::KeyCmd),
    /// Register, promote, roll back and list model versions.
    #[command(subcommand)]
    Models(admin::ModelCmd),
    /// Usage and spend of one tenant or of all tenants, by day, model or tenant.
    Usage(admin::UsageArgs),
    /// The audit trail: list with filters, export as JSONL, verify the hash chains.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Back up the whole table to the bucket (gzipped JSONL parts and a
    /// manifest), then apply retention; `--list` shows the backups.
    Backup(ops::BackupArgs),
    /// Restore a backup (default: the latest) into an empty table, verified
    /// first, resumable, with a progress bar.
    Restore(ops::RestoreArgs),
    /// A tenant's batch jobs (with its API key): submit a JSONL file and wait
    /// for its results, list, show, cancel, download.
    #[command(subcommand)]
    Batches(batches::BatchCmd),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Tenants(cmd) => admin::tenants(cmd).await,
        Command::Keys(cmd) => admin::keys(cmd).await,
        Command::Models(cmd) => admin::models(cmd).await,
        Command::Usage(args) => admin::usage(args).await,
        Command::Audit(cmd) => audit::audit(cmd).await,
        Command::Backup(args) => ops::backup(args).await,
        Command::Restore(args) => ops::restore(args).await,
        Command::Batches(cmd) => batches::batches(cmd).await,
    }
}
