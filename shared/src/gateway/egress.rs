//! Outbound HTTP whose target a tenant or an admin chooses (alert webhooks; the
//! upstream providers of chat next): one policy, enforced where it cannot be
//! talked around.
//!
//! - **URLs** ([`EgressPolicy::check_url`]): `https` only (plain `http` only when
//!   private addresses are allowed), no `user:password@` part, at most
//!   [`MAX_URL_LEN`] characters; a host given as an IP address (in any of the
//!   forms the URL parser normalises, such as `2130706433` for 127.0.0.1) or named
//!   `localhost` is judged at once.
//! - **Addresses, at connect time**: every name is resolved by [`GuardedResolver`],
//!   which drops each address the policy blocks before the client may connect to
//!   it, so a name that resolved to a public address when it was saved and to
//!   `127.0.0.1` now (DNS rebinding) still cannot reach the inside.
//! - **Blocked** ([`blocked`]): loopback, private (10/8, 172.16/12, 192.168/16,
//!   fc00::/7), link-local (169.254/16, fe80::/10), CGNAT (100.64/10), site-local
//!   and local NAT64 (unless private addresses are allowed); always: unspecified,
//!   "this network" (0/8), broadcast, multicast, reserved (240/4), documentation
//!   and benchmarking ranges, Teredo, discard-only, and cloud metadata
//!   (169.254.169.254, 169.254.170.2, 169.254.170.23, fd00:ec2::254, fd00:ec2::23);
//!   IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
//!   addresses are judged by the IPv4 address they carry.
//! - **No redirects** are followed, no proxy is used (a proxy would resolve the
//!   name itself), connects and whole requests have timeouts, and response
//!   bodies are read up to a bound ([`read_limited`]).
//!
//! Private addresses (and `http`) open only with an explicit setting:
//! `TENANTAI_EGRESS_ALLOW_PRIVATE=1`, or `tenantai dev --allow-private-egress`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// What outbound calls may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Opens loopback, private, link-local and CGNAT addresses, and plain `http`
    /// (local testing only; metadata and the other always-blocked ranges stay shut).
    pub allow_private: bool,
    pub connect_timeout: Duration,
    /// Longest a whole request may take (connect, send, answer).
    pub timeout: Duration,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            allow_private: false,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why an outbound call was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("{0}")]
    InvalidUrl(String),
    #[error("{host} is not reachable from here: {reason}")]
    Blocked { host: String, reason: &'static str },
    #[error("the response exceeds {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Http(String),
}

impl EgressPolicy {
    /// Defaults, with private addresses open when `TENANTAI_EGRESS_ALLOW_PRIVATE`
    /// is `1` or `true`.
    pub fn from_env() -> Self {
        let allow = std::env::var("TENANTAI_EGRESS_ALLOW_PRIVATE")
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        EgressPolicy {
            allow_private: allow,
            ..EgressPolicy::default()
        }
    }

    /// Parses and checks a URL a tenant or admin gave (see the module docs).
    /// Names are checked again, address by address, at connect time.
    pub fn check_url(&self, raw: &str) -> Result<Url, EgressError> {
        let invalid = |m: &str| EgressError::InvalidUrl(m.to_string());
        if raw.len() > MAX_URL_LEN {
            return Err(invalid("the URL is longer than 2048 characters"));
        }
        let url = Url::parse(raw).map_err(|e| invalid(&format!("not a URL ({e})")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            "http" => return Err(invalid("the URL must use https")),
            _ => return Err(invalid("the URL must be an https URL")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("the URL may not carry a user name or password"));
        }
        let host = url.host().ok_or_else(|| invalid("the URL has no host"))?;
        let verdict = match host {
            url::Host::Ipv4(ip) => blocked(IpAddr::V4(ip), self.allow_private),
            url::Host::Ipv6(ip) => blocked(IpAddr::V6(ip), self.allow_private),
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                let local = name == "localhost" || name.ends_with(".localhost");
                (local && !self.allow_private).then_some("a loopback name")
            }
        };
        if let Some(reason) = verdict {
            return Err(EgressError::Blocked {
                host: host.to_string(),
                reason,
            });
        }
        Ok(url)
    }
}

/// Why the policy blocks `ip` (`None`: it may be reached).
pub fn blocked(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let (always, private) = match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    };
    always.or(private.filter(|_| !allow_private))
}

/// (always blocked, blocked unless private addresses are allowed)
type Verdict = (Option<&'static str>, Option<&'static str>);

fn classify_v4(ip: Ipv4Addr) -> Verdict {
    let [a, b, c, d] = ip.octets();
    let always = match (a, b, c, d) {
        (169, 254, 169, 254) | (169, 254, 170, 2) | (169, 254, 170, 23) => {
            Some("a cloud metadata address")
        }
        (0, ..) => Some("an unspecified or 'this network' address"),
        (255, 255, 255, 255) => Some("the broadcast address"),
        (224..=239, ..) => Some("a multicast address"),
        (240..=255, ..) => Some("a reserved address"),
        (192, 0, 2, _) | (198, 51, 100, _) | (203, 0, 113, _) => Some("a documentation address"),
        (198, 18..=19, ..) => Some("a benchmarking address"),
        (192, 0, 0, _) => Some("an IETF protocol address"),
        _ => None,
    };
    let private = match (a, b) {
        (127, _) => Some("a loopback address"),
        (10, _) | (172, 16..=31) | (192, 168) => Some("a private address"),
        (169, 254) => Some("a link-local address"),
        (100, 64..=127) => Some("a shared (CGNAT) address"),
        _ => None,
    };
    (always, private)
}

fn classify_v6(ip: Ipv6Addr) -> Verdict {
    let seg = ip.segments();
    // Forms that carry an IPv4 address are judged by it.
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let always = if ip == Ipv6Addr::UNSPECIFIED {
        Some("the unspecified address")
    } else if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        || ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)
    {
        Some("a cloud metadata address")
    } else if seg[0] & 0xff00 == 0xff00 {
        Some("a multicast address")
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        Some("a documentation address")
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        Some("a Teredo address")
    } else if seg[0] == 0x0100 && seg[1..4] == [0, 0, 0] {
        Some("a discard-only address")
    } else {
        None
    };
    let private = if ip == Ipv6Addr::LOCALHOST {
        Some("a loopback address")
    } else if seg[0] & 0xfe00 == 0xfc00 {
        Some("a unique local (private) address")
    } else if seg[0] & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if seg[0] & 0xffc0 == 0xfec0 {
        Some("a site-local address")
    } else if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2] == 1 {
        Some("a local NAT64 address")
    } else {
        None
    };
    (always, private)
}

/// The IPv4 address an IPv6 address carries: mapped (::ffff:a.b.c.d),
/// compatible (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d) or 6to4 (2002:aabb:ccdd::).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let tail = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match seg {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(tail(hi, lo)),
        // ::1 and :: are IPv6's own loopback and unspecified addresses.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => Some(tail(hi, lo)),
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(tail(hi, lo)),
        [0x2002, hi, lo, ..] => Some(tail(hi, lo)),
        _ => None,
    }
}

/// Resolves names with `inner` (the system resolver by default) and keeps
/// only the addresses the policy allows; a name left with none fails to
/// resolve, naming why.
pub struct GuardedResolver {
    inner: Arc<dyn Resolve>,
    allow_private: bool,
}

/// The system resolver (getaddrinfo on the blocking pool).
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl GuardedResolver {
    pub fn new(inner: Arc<dyn Resolve>, allow_private: bool) -> Self {
        GuardedResolver {
            inner,
            allow_private,
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let allow_private = self.allow_private;
        let resolving = self.inner.resolve(name);
        Box::pin(async move {
            let mut reason = "it resolves to no address";
            let allowed: Vec<SocketAddr> = resolving
                .await?
                .filter(|a| match blocked(a.ip(), allow_private) {
                    Some(why) => {
                        reason = why;
                        tracing::warn!(%host, address = %a.ip(), reason = why, "outbound address blocked");
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(EgressError::Blocked { host, reason }) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// An HTTP client bound to an [`EgressPolicy`]: every request's URL is checked,
/// and every address it connects to.
#[derive(Clone)]
pub struct Egress {
    client: reqwest::Client,
    policy: EgressPolicy,
}

impl Egress {
    /// A client resolving names with the system resolver.
    pub fn new(policy: EgressPolicy) -> Result<Self, EgressError> {
        Self::with_resolver(policy, Arc::new(SystemResolver))
    }

    /// A client resolving names with `resolver` (whose answers are still
    /// filtered by the policy).
    pub fn with_resolver(
        policy: EgressPolicy,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, EgressError> {
        Self::build(policy, resolver, None)
    }

    /// A client for long answers (streams): besides the policy's whole-request
    /// timeout, each read must come within `read_timeout`.
    pub fn streaming(policy: EgressPolicy, read_timeout: Duration) -> Result<Self, EgressError> {
        Self::build(policy, Arc::new(SystemResolver), Some(read_timeout))
    }

    fn build(
        policy: EgressPolicy,
        resolver: Arc<dyn Resolve>,
        read_timeout: Option<Duration>,
    ) -> Result<Self, EgressError> {
        crate::gateway::backend::install_crypto();
        let mut builder = reqwest::Client::builder();
        if let Some(t) = read_timeout {
            builder = builder
                .read_timeout(t)
                .pool_max_idle_per_host(64)
                .tcp_nodelay(true);
        }
        let client = builder
            .dns_resolver(Arc::new(GuardedResolver::new(
                resolver,
                policy.allow_private,
            )))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.timeout)
            .build()
            .map_err(|e| EgressError::Http(format!("cannot build the HTTP client: {e}")))?;
        Ok(Egress { client, policy })
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// A request to `url` once it passes the policy.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, EgressError> {
        let url = self.policy.check_url(url)?;
        Ok(self.client.request(method, url))
    }

    /// A POST to `url` once it passes the policy.
    pub fn post(&self, url: &str) -> Result<reqwest::RequestBuilder, EgressError> {
        self.request(reqwest::Method::POST, url)
    }
}

/// Describes a failed send, naming a policy refusal when that was the cause.
pub fn describe(err: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(blocked) = e.downcast_ref::<EgressError>() {
            return blocked.to_string();
        }
        source = e.source();
    }
    err.to_string()
}

/// Reads a response body, refusing one longer than `limit` bytes.
pub async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, EgressError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(EgressError::TooLarge(limit));
    }
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| EgressError::Http(describe(&e)))?
    {
        if out.len() + chunk.len() > limit {
            return Err(EgressError::TooLarge(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    #[test]
    fn private_and_special_addresses_are_classified() {
        for (ip, open_with_private) in [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("192.168.1.1", true),
            ("169.254.1.1", true),
            ("100.64.0.1", true),
            ("169.254.169.254", false),
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("224.0.0.1", false),
            ("192.0.2.1", false),
        ] {
            assert!(blocked(v4(ip), false).is_some(), "{ip}");
            assert_eq!(blocked(v4(ip), true).is_none(), open_with_private, "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "1.1.1.1"] {
            assert_eq!(blocked(v4(ip), false), None, "{ip}");
        }
        for (ip, open_with_private) in [
            ("::1", true),
            ("::", false),
            ("fe80::1", true),
            ("fc00::1", true),
            ("fd12::1", true),
            ("fd00:ec2::254", false),
            ("ff02::1", false),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", false),
            ("::127.0.0.1", true),
            ("64:ff9b::10.0.0.1", true),
            ("2002:7f00:1::", true),
            ("2002:a9fe:a9fe::", false),
            ("2001:db8::1", false),
            ("2001::1", false),
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert!(blocked(addr, false).is_some(), "{ip}");
            assert_eq!(blocked(addr, true).is_none(), open_with_private, "{ip}");
        }
        assert_eq!(blocked("2606:4700::1111".parse().unwrap(), false), None);
        assert_eq!(blocked("::ffff:8.8.8.8".parse().unwrap(), false), None);
    }
}
