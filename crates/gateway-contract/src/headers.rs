//! Header names of the contract, lowercase as HTTP/2 sends them.

/// The request id every answer and every access-log line carries.
pub const REQUEST_ID: &str = "x-request-id";
/// Who the gateway verified the caller to be (set by the auth filter).
pub const IDENTITY: &str = "x-gateway-identity";
/// The verified caller's scopes, space-separated.
pub const SCOPES: &str = "x-gateway-scopes";
/// The verified caller's tenant.
pub const TENANT: &str = "x-gateway-tenant";
/// The gateway's signature over the identity headers, for the services behind it.
pub const SIGNATURE: &str = "x-gateway-signature";
/// The namespace the gateway reserves: clients' headers under it are removed before any filter
/// runs, so only the gateway sets them.
pub const RESERVED_PREFIX: &str = "x-gateway-";
