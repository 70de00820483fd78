//! Telemetry, by Istio's documented rules and the providers meshd knows: the first problem, by
//! its field path.

use super::{Check, selector};
use crate::telemetry::{
    ACCESS_LOG_PROVIDERS, METRICS_PROVIDERS, ProviderRef, TRACING_PROVIDERS, TagOperation,
    Telemetry,
};

/// Longer filter expressions are refused: Envoy compiles each in every listener.
const MAX_EXPRESSION_LEN: usize = 4096;
const MAX_ENTRIES: usize = 64;

fn providers(list: &[ProviderRef], known: &[&str], at: &str) -> Check {
    for (i, p) in list.iter().enumerate() {
        if p.name.is_empty() {
            return Err(format!("{at}.providers[{i}].name: must be set"));
        }
        if !known.contains(&p.name.as_str()) {
            return Err(format!(
                "{at}.providers[{i}].name: unknown provider `{}` (meshd's providers here: {})",
                p.name,
                known.join(", ")
            ));
        }
    }
    Ok(())
}

fn bounded<T>(list: &[T], at: &str) -> Check {
    if list.len() > MAX_ENTRIES {
        return Err(format!(
            "{at}: {} entries, at most {MAX_ENTRIES} allowed",
            list.len()
        ));
    }
    Ok(())
}

/// What meshd can check of a CEL expression without a CEL compiler: bounded, printable, its
/// brackets and quotes balanced. Envoy compiles it; one it refuses is NACKed (the proxy keeps
/// its previous listeners), so the plain mistakes are caught here by name.
fn expression(text: &str, at: &str) -> Check {
    if text.trim().is_empty() {
        return Err(format!("{at}: must not be empty"));
    }
    if text.len() > MAX_EXPRESSION_LEN {
        return Err(format!(
            "{at}: {} bytes, at most {MAX_EXPRESSION_LEN} allowed",
            text.len()
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(format!("{at}: control characters are not allowed"));
    }
    let mut stack = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return Err(format!("{at}: `{c}` closes nothing (not a CEL expression)"));
                }
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err(format!("{at}: unterminated string (not a CEL expression)"));
    }
    if let Some(c) = stack.pop() {
        return Err(format!(
            "{at}: `{c}` is never closed (not a CEL expression)"
        ));
    }
    Ok(())
}

pub(crate) fn telemetry(t: &Telemetry) -> Check {
    if let Some(sel) = &t.selector {
        selector::labels(&sel.labels, "spec.selector.matchLabels")?;
    }
    let targets = t.target_ref.is_some() || !t.target_refs.is_empty();
    if targets && t.selector.is_some() {
        return Err("spec: only one of targetRefs or selector can be set".into());
    }
    if targets {
        let field = if t.target_ref.is_some() {
            "targetRef"
        } else {
            "targetRefs"
        };
        return Err(super::target_refs_refused(field, "selector"));
    }
    bounded(&t.tracing, "spec.tracing")?;
    bounded(&t.access_logging, "spec.accessLogging")?;
    bounded(&t.metrics, "spec.metrics")?;
    if t.tracing.len() > 1 {
        return Err("spec.tracing: multiple tracing is not currently supported".into());
    }
    for (i, tr) in t.tracing.iter().enumerate() {
        let at = format!("spec.tracing[{i}]");
        if tr.providers.len() > 1 {
            return Err(format!(
                "{at}.providers: multiple providers is not currently supported"
            ));
        }
        providers(&tr.providers, TRACING_PROVIDERS, &at)?;
        if let Some(p) = tr.random_sampling_percentage
            && !(0.0..=100.0).contains(&p)
        {
            return Err(format!(
                "{at}.randomSamplingPercentage: {p} must be in range [0.0, 100.0]"
            ));
        }
        bounded(
            &tr.custom_tags.keys().collect::<Vec<_>>(),
            &format!("{at}.customTags"),
        )?;
        for (name, tag) in &tr.custom_tags {
            let at = format!("{at}.customTags.{name}");
            if name.is_empty() {
                return Err(format!("{at}: a tag name must not be empty"));
            }
            let kinds = [
                tag.literal.is_some(),
                tag.environment.is_some(),
                tag.header.is_some(),
            ];
            match kinds.iter().filter(|k| **k).count() {
                0 => {
                    return Err(format!(
                        "{at}: one of literal, environment or header must be set"
                    ));
                }
                1 => {}
                _ => {
                    return Err(format!(
                        "{at}: only one of literal, environment or header can be set"
                    ));
                }
            }
            if tag.environment.as_ref().is_some_and(|e| e.name.is_empty()) {
                return Err(format!("{at}.environment.name: must be set"));
            }
            if tag.header.as_ref().is_some_and(|h| h.name.is_empty()) {
                return Err(format!("{at}.header.name: must be set"));
            }
        }
    }
    for (i, log) in t.access_logging.iter().enumerate() {
        let at = format!("spec.accessLogging[{i}]");
        providers(&log.providers, ACCESS_LOG_PROVIDERS, &at)?;
        if let Some(f) = &log.filter {
            expression(&f.expression, &format!("{at}.filter.expression"))?;
        }
    }
    for (i, m) in t.metrics.iter().enumerate() {
        let at = format!("spec.metrics[{i}]");
        providers(&m.providers, METRICS_PROVIDERS, &at)?;
        if let Some(interval) = &m.reporting_interval {
            let d = crate::duration::parse(interval)
                .map_err(|e| format!("{at}.reportingInterval: {e}"))?;
            if d < std::time::Duration::from_millis(1) {
                return Err(format!(
                    "{at}.reportingInterval: must be at least 1ms (Envoy's least flush interval)"
                ));
            }
        }
        bounded(&m.overrides, &format!("{at}.overrides"))?;
        for (j, o) in m.overrides.iter().enumerate() {
            let at = format!("{at}.overrides[{j}]");
            if let Some(sel) = &o.r#match {
                if sel.metric.is_some() && sel.custom_metric.is_some() {
                    return Err(format!(
                        "{at}.match: only one of metric or customMetric can be set"
                    ));
                }
                if sel.custom_metric.is_some() {
                    return Err(format!(
                        "{at}.match.customMetric: not supported (meshd records Istio's standard metrics only)"
                    ));
                }
            }
            bounded(
                &o.tag_overrides.keys().collect::<Vec<_>>(),
                &format!("{at}.tagOverrides"),
            )?;
            for (tag, op) in &o.tag_overrides {
                let at = format!("{at}.tagOverrides.{tag}");
                if tag.is_empty() {
                    return Err(format!("{at}: a tag name must not be empty"));
                }
                match (op.operation, &op.value) {
                    (TagOperation::Remove, Some(_)) => {
                        return Err(format!("{at}.value: can only be set with operation UPSERT"));
                    }
                    (TagOperation::Upsert, None) => {
                        return Err(format!("{at}.value: must be set with operation UPSERT"));
                    }
                    (TagOperation::Upsert, Some(value)) => {
                        if !crate::telemetry_tag::valid_label_name(tag) {
                            return Err(format!(
                                "{at}: `{tag}` is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, at most 128 bytes, not starting with __)"
                            ));
                        }
                        crate::telemetry_tag::parse(value)
                            .map_err(|e| format!("{at}.value: {e}"))?;
                    }
                    (TagOperation::Remove, None) => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "telemetry_tests.rs"]
mod tests;
