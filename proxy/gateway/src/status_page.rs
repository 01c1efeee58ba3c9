//! The admin listener's status page (`GET /`): one HTML page, rendered on the server with no
//! script, of what the gateway is serving: the configuration generation and the last reload,
//! routes, clusters and the health of their endpoints, filter chains with each filter's trap and
//! VM restart counts, and the shared-data backend.

use crate::config::{HeaderCondition, PathMatch, RouteMatch};
use crate::reload::Reloader;
use crate::state::GatewayState;
use proxy_wasm_host::{TRAPS_METRIC, VM_RESTARTS_METRIC};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin-bottom:2em}th,td{border:1px solid #ccc;padding:4px 8px;\
text-align:left;vertical-align:top}th{background:#f3f3f3}.bad{color:#b00020}.ok{color:#1b5e20}";

/// The page, for the generation serving now.
pub fn render(state: &GatewayState, reloader: &Reloader) -> String {
    let generation = state.current();
    let mut page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Gateway status</title>\
         <style>{STYLE}</style></head><body><h1>Gateway status</h1>"
    );
    let _ = write!(
        page,
        "<p id=\"generation\">Configuration generation <b>{}</b> from <code>{}</code>; {}.</p>",
        generation.number,
        escape(&reloader.path().display().to_string()),
        last_reload(reloader),
    );
    let (backend, backend_state) = state.shared_data.describe();
    let _ = write!(
        page,
        "<p id=\"shared-data\">Shared data: <b>{backend}</b>, {backend_state}.</p>"
    );

    page.push_str("<h2>Routes</h2><table id=\"routes\"><tr><th>route</th><th>match</th><th>cluster</th><th>filter chain</th></tr>");
    for route in generation.routes() {
        let chain = route
            .chain
            .as_ref()
            .map_or("none", |chain| chain.name.as_str());
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&route.config.name),
            escape(&describe_match(&route.config.matcher)),
            escape(&route.cluster.config.name),
            escape(chain),
        );
    }
    page.push_str("</table>");

    page.push_str("<h2>Clusters</h2><table id=\"clusters\"><tr><th>cluster</th><th>healthy</th><th>endpoints</th></tr>");
    let mut clusters: Vec<_> = generation.clusters().collect();
    clusters.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    for cluster in clusters {
        let healthy = cluster.healthy_endpoints();
        let class = if healthy == 0 { "bad" } else { "ok" };
        let endpoints: Vec<String> = cluster
            .endpoints
            .iter()
            .map(|endpoint| {
                let name = endpoint
                    .name
                    .as_ref()
                    .map_or(String::new(), |name| format!(" ({})", escape(name)));
                let health = if endpoint.is_healthy() {
                    "<span class=\"ok\">healthy</span>"
                } else {
                    "<span class=\"bad\">unhealthy</span>"
                };
                format!("{}{name} {health}", endpoint.address)
            })
            .collect();
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"{class}\">{healthy} of {}</td><td>{}</td></tr>",
            escape(&cluster.config.name),
            cluster.endpoints.len(),
            endpoints.join("<br>"),
        );
    }
    page.push_str("</table>");

    page.push_str("<h2>Filter chains</h2><table id=\"filter-chains\"><tr><th>chain</th><th>filter</th><th>traps</th><th>VM restarts</th></tr>");
    let chains: BTreeMap<&str, _> = generation
        .routes()
        .filter_map(|route| route.chain.as_ref())
        .map(|chain| (chain.name.as_str(), chain))
        .collect();
    let metrics = state.host.metrics();
    for (name, chain) in chains {
        for filter in chain.filter_names() {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(name),
                escape(filter),
                metrics.value(filter, TRAPS_METRIC),
                metrics.value(filter, VM_RESTARTS_METRIC),
            );
        }
    }
    page.push_str("</table><p>Trap and restart counts are per filter name, as in <code>/metrics</code>: a name used in two chains shows one total.</p><p>Prometheus metrics: <a href=\"/metrics\">/metrics</a>; the configuration generation as JSON: <a href=\"/config\">/config</a>.</p></body></html>");
    page
}

fn last_reload(reloader: &Reloader) -> String {
    let Some(report) = reloader.last_report() else {
        return "no reload since start".into();
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let ago = now_ms.saturating_sub(report.finished_at_ms) / 1000;
    let trigger = match report.trigger {
        crate::reload::Trigger::Signal => "SIGHUP",
        crate::reload::Trigger::FileChange => "a file change",
    };
    match &report.error {
        None => format!("last reload ({trigger}) <span class=\"ok\">applied</span> {ago} s ago"),
        Some(error) => format!(
            "last reload ({trigger}) <span class=\"bad\">refused</span> {ago} s ago: {}",
            escape(error)
        ),
    }
}

/// A route's conditions in a line, as written in the file.
fn describe_match(matcher: &RouteMatch) -> String {
    let mut parts = Vec::new();
    match &matcher.path {
        Some(PathMatch::Prefix(prefix)) => parts.push(format!("path prefix {prefix}")),
        Some(PathMatch::Exact(exact)) => parts.push(format!("path {exact}")),
        Some(PathMatch::Regex(pattern)) => parts.push(format!("path ~ {}", pattern.as_str())),
        None => {}
    }
    if !matcher.methods.is_empty() {
        parts.push(format!("methods {}", matcher.methods.join(", ")));
    }
    if !matcher.hosts.is_empty() {
        parts.push(format!("hosts {}", matcher.hosts.join(", ")));
    }
    if !matcher.listeners.is_empty() {
        parts.push(format!("listeners {}", matcher.listeners.join(", ")));
    }
    for header in &matcher.headers {
        let name = header.name.as_str();
        parts.push(match &header.condition {
            HeaderCondition::Exact(value) => format!("{name} = {value}"),
            HeaderCondition::Regex(pattern) => format!("{name} ~ {}", pattern.as_str()),
            HeaderCondition::Present(true) => format!("{name} present"),
            HeaderCondition::Present(false) => format!("{name} absent"),
        });
    }
    if parts.is_empty() {
        "every request".into()
    } else {
        parts.join("; ")
    }
}

/// `text` safe inside HTML elements and quoted attributes: names and errors come from the
/// configuration file.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn names_from_the_file_cannot_inject_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }
}
