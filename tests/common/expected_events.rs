//! What each sample event in `events/` must produce, for the tests that call the
//! handlers directly and for those that invoke the functions through cargo-lambda.

/// api events that need no backend, and their status.
pub const API: [(&str, u16); 10] = [
    ("api/models.json", 200),
    ("api/usage-chart.json", 200),
    ("api/model.json", 200),
    ("api/unauthenticated.json", 401),
    ("api/embeddings-malformed.json", 400),
    ("api/embeddings-unknown-model.json", 404),
    ("api/chat-malformed.json", 400),
    ("api/chat-embedding-model.json", 400),
    ("api/rest-health.json", 200),
    ("api/rest-openapi.json", 200),
];

/// admin events, in an order where each one's preconditions hold, and their status.
pub const ADMIN: [(&str, u16); 24] = [
    ("admin/rest-iam-openapi.json", 200),
    ("admin/create-tenant.json", 201),
    ("admin/list-tenants.json", 200),
    ("admin/get-tenant.json", 200),
    ("admin/update-tenant.json", 200),
    ("admin/rest-iam-update-tenant.json", 200),
    ("admin/create-key.json", 201),
    ("admin/list-keys.json", 200),
    ("admin/tenant-usage-chart.json", 200),
    ("admin/tenant-batches.json", 200),
    ("admin/tenant-alerts.json", 200),
    ("admin/console.json", 200),
    ("admin/register-model.json", 201),
    ("admin/list-models.json", 200),
    ("admin/promote-model.json", 200),
    ("admin/rollback-model.json", 200),
    ("admin/set-override.json", 200),
    ("admin/revoke-key.json", 200),
    ("admin/audit.json", 200),
    ("admin/audit-filtered.json", 200),
    ("admin/audit-export.json", 200),
    ("admin/audit-verify.json", 200),
    ("admin/export-tenant.json", 201),
    ("admin/forged-token.json", 401),
];

/// The erasure of the seeded tenant, after every other admin event: then the
/// tenant is gone and only its erasure receipt answers.
pub const ADMIN_ERASE: [(&str, u16); 3] = [
    ("admin/erase-tenant.json", 200),
    ("admin/erasure-status.json", 200),
    ("admin/get-tenant.json", 404),
];

/// authorizer events that must be refused.
/// REST API authorizer events that are refused (`Unauthorized`, a 401).
pub const REST_AUTHORIZER_REFUSED: [&str; 2] = [
    "authorizer/rest-forged-key.json",
    "authorizer/rest-missing-header.json",
];

pub const AUTHORIZER_REFUSED: [&str; 4] = [
    "authorizer/revoked-key.json",
    "authorizer/forged-key.json",
    "authorizer/missing-header.json",
    "authorizer/malformed-header.json",
];
