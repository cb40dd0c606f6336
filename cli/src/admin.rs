//! Admin commands: calls to the admin API of a running instance.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::output::{line, print};
use tenantai::tenancy::text::escape_terminal;

#[derive(Args, Clone)]
pub struct Conn {
    /// Base URL of the instance.
    #[arg(
        long,
        env = "TENANTAI_ENDPOINT",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    endpoint: String,
    /// Admin bearer token (`tenantai dev` prints one and writes it to its credentials file).
    #[arg(
        long,
        env = "TENANTAI_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl Conn {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.call_with_query(method, path, &[], body).await
    }

    /// `call` with query parameters (encoded by the HTTP client).
    async fn call_with_query(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.call_status(method, path, query, body).await?;
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("no message");
            bail!("{status}: {}", escape_terminal(msg));
        }
        Ok(body)
    }

    /// A call whose status the caller judges (a 202 that asks to call again).
    pub(crate) async fn call_status(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let resp = self.send(method, path, query, body).await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Sends a request to the admin API; the response is the caller's to read.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let token = self
            .admin_token
            .as_deref()
            .context("no admin token: pass --admin-token or set TENANTAI_ADMIN_TOKEN")?;
        tenantai::gateway::backend::install_crypto();
        let mut url = reqwest::Url::parse(&format!(
            "{}/admin/v1{path}",
            self.endpoint.trim_end_matches('/')
        ))
        .with_context(|| format!("--endpoint {} is not a URL", self.endpoint))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut req = reqwest::Client::new()
            .request(method, url.clone())
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
            .await
            .with_context(|| format!("cannot reach {url}"))
    }

    pub(crate) fn json(&self) -> bool {
        self.json
    }
}

const TENANT_COLS: &[&str] = &[
    "id",
    "name",
    "tier",
    "status",
    "cache_scope",
    "monthly_budget_micros",
];
/// A usage report of one tenant or of all of them.
#[derive(Args)]
pub struct UsageArgs {
    /// One tenant's usage (default: every tenant's).
    #[arg(long)]
    tenant: Option<String>,
    /// First day, YYYY-MM-DD (default: the first of this month).
    #[arg(long)]
    from: Option<String>,
    /// Last day, YYYY-MM-DD (default: today).
    #[arg(long)]
    to: Option<String>,
    /// Comma-separated: tenant (all tenants only), day, model.
    #[arg(long)]
    group_by: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// The `next` token of the previous page.
    #[arg(long)]
    after: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

pub async fn usage(a: UsageArgs) -> anyhow::Result<()> {
    let path = match &a.tenant {
        Some(t) => format!("/tenants/{t}/usage"),
        None => "/usage".to_string(),
    };
    let limit = a.limit.to_string();
    let mut query = vec![("limit", limit.as_str())];
    for (k, v) in [
        ("from", &a.from),
        ("to", &a.to),
        ("group_by", &a.group_by),
        ("after", &a.after),
    ] {
        if let Some(v) = v {
            query.push((k, v));
        }
    }
    let report = a
        .conn
        .call_with_query(Method::GET, &path, &query, None)
        .await?;
    // The grouping columns the report has, then every counter.
    let groups = report["group_by"].as_array().cloned().unwrap_or_default();
    let columns: Vec<&str> = ["tenant_id", "day", "model"]
        .into_iter()
        .filter(|c| groups.iter().any(|g| g == c))
        .chain(tenantai::billing::metering::COUNTERS)
        .collect();
    print(&report, &columns, a.conn.json);
    if !a.conn.json {
        let mut totals = report["totals"].clone();
        if let Some(t) = totals.as_object_mut() {
            t.insert("tenant_id".into(), "TOTAL".into());
            t.insert("day".into(), "TOTAL".into());
            t.insert("model".into(), "TOTAL".into());
        }
        println!();
        print(&totals, &columns, false);
    }
    Ok(())
}

const KEY_COLS: &[&str] = &[
    "key_id",
    "prefix",
    "name",
    "scopes",
    "expires_at",
    "revoked_at",
];
const MODEL_COLS: &[&str] = &[
    "model",
    "version",
    "status",
    "canary_weight",
    "backend",
    "endpoint",
    "price_per_1k_tokens_micros",
    "owner_tenant",
    "tier",
];

#[derive(Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        #[arg(long)]
        name: String,
        /// free, pro, enterprise (or a configured tier).
        #[arg(long, default_value = "free")]
        tier: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List tenants, a page at a time.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// The `next` token of the previous page.
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one tenant.
    Get {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a tenant's name, tier, status, cache scope or budget.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        tier: Option<String>,
        /// active or suspended.
        #[arg(long)]
        status: Option<String>,
        /// tenant or shared.
        #[arg(long)]
        cache_scope: Option<String>,
        /// Monthly budget in micro-dollars.
        #[arg(long)]
        budget_micros: Option<u64>,
        /// Whether the budget is a hard cap (requests over it get 429 insufficient_quota).
        #[arg(long)]
        hard_cap: Option<bool>,
        /// Budget percentages that raise cost alerts, e.g. 50,80,100.
        #[arg(long, value_delimiter = ',')]
        alert_thresholds: Option<Vec<u16>>,
        /// Where cost alerts are POSTed (https; signed, the secret is shown once when set); "" removes it.
        #[arg(long)]
        alert_webhook_url: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a new webhook signing secret (shown once); the previous one keeps
    /// signing beside it for the overlap.
    RotateWebhookSecret {
        id: String,
        /// Seconds the previous secret keeps signing (default a day, at most a week).
        #[arg(long)]
        overlap_secs: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// GDPR export: everything held about the tenant, as one archive (.tar.gz).
    Export {
        id: String,
        /// Where to write the archive (default: <id>-<export id>.tar.gz).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// GDPR erasure: revoke the tenant's keys at once, then delete everything
    /// held about it, leaving an erasure receipt in the audit log.
    Erase {
        id: String,
        /// The tenant id again, to confirm.
        #[arg(long)]
        confirm: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Prints a tenant; a signing secret the call made is printed on its own line, this once.
fn print_tenant(v: &Value, json: bool) {
    print(v, TENANT_COLS, json);
    if json {
        return;
    }
    if let Some(hook) = v.get("alert_webhook").filter(|h| h.is_object()) {
        line(&format!(
            "alert webhook: {}",
            hook["url"].as_str().unwrap_or("")
        ));
        if let Some(secret) = hook["secret"].as_str() {
            line(&format!(
                "webhook signing secret (shown once, store it now): {secret}"
            ));
        }
        if let Some(t) = hook["previous_secret_retires_at"].as_i64() {
            line(&format!(
                "the previous secret keeps signing until {t} (Unix seconds)"
            ));
        }
    }
}

pub async fn tenants(cmd: TenantCmd) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Export { id, out, conn } => crate::gdpr::export(&conn, &id, out).await?,
        TenantCmd::Erase { id, confirm, conn } => crate::gdpr::erase(&conn, &id, &confirm).await?,
        TenantCmd::Create { name, tier, conn } => {
            let v = conn
                .call(
                    Method::POST,
                    "/tenants",
                    Some(json!({"name": name, "tier": tier})),
                )
                .await?;
            print(&v, TENANT_COLS, conn.json);
        }
        TenantCmd::List { limit, after, conn } => {
            let mut path = format!("/tenants?limit={limit}");
            if let Some(a) = after {
                path.push_str(&format!("&after={a}"));
            }
            print(
                &conn.call(Method::GET, &path, None).await?,
                TENANT_COLS,
                conn.json,
            );
        }
        TenantCmd::Get { id, conn } => print_tenant(
            &conn
                .call(Method::GET, &format!("/tenants/{id}"), None)
                .await?,
            conn.json,
        ),
        TenantCmd::RotateWebhookSecret {
            id,
            overlap_secs,
            conn,
        } => print_tenant(
            &conn
                .call(
                    Method::POST,
                    &format!("/tenants/{id}/alert-webhook/rotate-secret"),
                    Some(json!({"overlap_secs": overlap_secs})),
                )
                .await?,
            conn.json,
        ),
        TenantCmd::Update {
            id,
            name,
            tier,
            status,
            cache_scope,
            budget_micros,
            hard_cap,
            alert_thresholds,
            alert_webhook_url,
            conn,
        } => {
            let mut patch = serde_json::Map::new();
            for (k, v) in [
                ("name", name.map(Value::from)),
                ("tier", tier.map(Value::from)),
                ("status", status.map(Value::from)),
                ("cache_scope", cache_scope.map(Value::from)),
                ("monthly_budget_micros", budget_micros.map(Value::from)),
                ("hard_cap", hard_cap.map(Value::from)),
                ("alert_thresholds", alert_thresholds.map(Value::from)),
                ("alert_webhook_url", alert_webhook_url.map(Value::from)),
            ] {
                if let Some(v) = v {
                    patch.insert(k.into(), v);
                }
            }
            if patch.is_empty() {
                bail!("nothing to change: pass at least one of --name, --tier, --status, --cache-scope, --budget-micros, --hard-cap, --alert-thresholds, --alert-webhook-url");
            }
            print_tenant(
                &conn
                    .call(
                        Method::PATCH,
                        &format!("/tenants/{id}"),
                        Some(Value::Object(patch)),
                    )
                    .await?,
                conn.json,
            );
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create an API key; its secret is shown this once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated: embeddings, chat, models, usage, batches (default: all).
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// Expiry, Unix seconds.
        #[arg(long)]
        expires_at: Option<i64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List a tenant's keys (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a key at once.
    Revoke {
        #[arg(long)]
        tenant: String,
        key_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn keys(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create {
            tenant,
            name,
            scopes,
            expires_at,
            conn,
        } => {
            let body = json!({"name": name, "scopes": scopes, "expires_at": expires_at});
            let v = conn
                .call(Method::POST, &format!("/tenants/{tenant}/keys"), Some(body))
                .await?;
            if conn.json {
                print(&v, &[], true);
            } else {
                print(&v, &["key_id", "prefix", "scopes", "expires_at"], false);
                line(&format!(
                    "\nsecret (shown once, store it now): {}",
                    v["secret"].as_str().unwrap_or("")
                ));
            }
        }
        KeyCmd::List { tenant, conn } => print(
            &conn
                .call(
                    Method::GET,
                    &format!("/tenants/{tenant}/keys?limit=100"),
                    None,
                )
                .await?,
            KEY_COLS,
            conn.json,
        ),
        KeyCmd::Revoke {
            tenant,
            key_id,
            conn,
        } => print(
            &conn
                .call(
                    Method::DELETE,
                    &format!("/tenants/{tenant}/keys/{key_id}"),
                    None,
                )
                .await?,
            KEY_COLS,
            conn.json,
        ),
    }
    Ok(())
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum ModelCmd {
    /// Register a model version.
    Register {
        #[arg(long)]
        model: String,
        #[arg(long)]
        version: String,
        /// Base URL of the worker serving it; SageMaker endpoint name; an
        /// upstream's base URL (ending in /v1). (`--endpoint` is the instance's URL.)
        #[arg(long)]
        backend_endpoint: String,
        /// embedding or chat.
        #[arg(long, default_value = "embedding")]
        kind: String,
        /// worker, sagemaker or openai (an OpenAI-compatible upstream).
        #[arg(long, default_value = "worker")]
        backend: String,
        /// Price per 1,000 input (prompt) tokens, micro-dollars.
        #[arg(long)]
        price_micros: u64,
        /// Price per 1,000 completion tokens, micro-dollars (chat).
        #[arg(long, default_value_t = 0)]
        completion_price_micros: u64,
        /// Context length in tokens (chat).
        #[arg(long)]
        context_length: Option<u32>,
        /// Completion cap when a request sets no max_tokens (chat).
        #[arg(long)]
        max_output_tokens: Option<u32>,
        /// The model id the upstream knows (openai backends).
        #[arg(long)]
        upstream_model: Option<String>,
        /// The secret holding the upstream's API key: an environment variable
        /// name in `tenantai dev`, a Secrets Manager secret on AWS (openai backends).
        #[arg(long)]
        api_key_secret: Option<String>,
        /// staged, canary or live.
        #[arg(long, default_value = "staged")]
        status: String,
        #[arg(long, default_value_t = 0)]
        canary_weight: u8,
        /// Make it a tenant-specific model.
        #[arg(long)]
        owner_tenant: Option<String>,
        /// Make it a tier model (with --serves).
        #[arg(long, requires = "serves")]
        tier: Option<String>,
        /// The base model a tier model stands in for.
        #[arg(long, requires = "tier")]
        serves: Option<String>,
        #[arg(long)]
        artifact_uri: Option<String>,
        /// What the version computes at: f32, bf16 or int8 (sets the
        /// validation gate's cosine threshold: 0.999, 0.999, 0.99).
        #[arg(long)]
        precision: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Compare a version's embeddings with the live version's (golden set and
    /// corpus): prints the figures; exits non-zero when it is refused.
    Validate {
        model: String,
        version: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a version live (the previous live version is retired), once it
    /// passes validation against the live version.
    Promote {
        model: String,
        version: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Retire the live version and restore the previous one.
    Rollback {
        model: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List every model version.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn models(cmd: ModelCmd) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Register {
            model,
            version,
            backend_endpoint,
            kind,
            backend,
            price_micros,
            completion_price_micros,
            context_length,
            max_output_tokens,
            upstream_model,
            api_key_secret,
            status,
            canary_weight,
            owner_tenant,
            tier,
            serves,
            artifact_uri,
            precision,
            conn,
        } => {
            let body = json!({
                "model": model, "version": version, "kind": kind, "backend": backend, "endpoint": backend_endpoint,
                "price_per_1k_tokens_micros": price_micros,
                "price_per_1k_completion_tokens_micros": completion_price_micros,
                "context_length": context_length, "max_output_tokens": max_output_tokens,
                "upstream_model": upstream_model, "api_key_secret": api_key_secret,
                "status": status, "canary_weight": canary_weight,
                "owner_tenant": owner_tenant, "tier": tier, "serves": serves, "artifact_uri": artifact_uri,
                "precision": precision,
            });
            print(
                &conn.call(Method::POST, "/models", Some(body)).await?,
                MODEL_COLS,
                conn.json,
            );
        }
        ModelCmd::Validate {
            model,
            version,
            conn,
        } => crate::validation::validate(&conn, &model, &version).await?,
        ModelCmd::Promote {
            model,
            version,
            conn,
        } => {
            let (status, body) = crate::validation::call_gated(
                &conn,
                &format!("/models/{model}/versions/{version}/promote"),
                format!("promoting {model}@{version}: validating it against the live version"),
            )
            .await?;
            if !(200..300).contains(&status) {
                crate::validation::show_refusal(&body, conn.json());
                bail!("{status}: {}", crate::validation::error_message(&body));
            }
            print(&body, MODEL_COLS, conn.json());
        }
        ModelCmd::Rollback { model, conn } => print(
            &conn
                .call(Method::POST, &format!("/models/{model}/rollback"), None)
                .await?,
            MODEL_COLS,
            conn.json,
        ),
        ModelCmd::List { conn } => print(
            &conn.call(Method::GET, "/models", None).await?,
            MODEL_COLS,
            conn.json,
        ),
    }
    Ok(())
}
