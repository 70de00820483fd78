//! Istio's path templates in AuthorizationPolicy `paths` / `notPaths` (Istio 1.22+): `{*}` stands
//! for exactly one path segment, `{**}` for zero or more, and only as the last operator. Istio
//! hands them to Envoy's URI template matcher as `*` and `**`. The rules are Istio's, held to
//! what that matcher parses, so that a template meshd accepts is never refused by a proxy: an
//! operator is a whole segment, no `*`, `{` or `}` outside one, and the other segments are
//! non-empty literals of Envoy's character set.

const ONE_SEGMENT: &str = "{*}";
const ANY_SEGMENTS: &str = "{**}";

/// Envoy's literal characters (RFC 3986 `pchar` without `*` and `=`, which its parser reserves).
fn literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@".contains(c)
}

/// Whether `path` is a template (holds `{*}` or `{**}`); any other path is an Istio string value
/// (exact, `prefix*`, `*suffix` or `*`).
pub fn is_template(path: &str) -> bool {
    path.contains(ONE_SEGMENT) || path.contains(ANY_SEGMENTS)
}

/// Envoy's URI template (`/api/*/items`) for the Istio path template `path`
/// (`/api/{*}/items`), or why `path` is not a valid one.
pub fn envoy_template(path: &str) -> Result<String, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("a path template must start with `/`".into());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    let mut any_seen = false;
    let mut out = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            ONE_SEGMENT | ANY_SEGMENTS if any_seen => {
                return Err(format!(
                    "`{ANY_SEGMENTS}` must be the last operator, `{segment}` follows it"
                ));
            }
            ONE_SEGMENT => out.push("*"),
            ANY_SEGMENTS => {
                any_seen = true;
                out.push("**");
            }
            // A trailing `/` is a segment of its own in Envoy's template; `//` is not.
            "" if i == last => out.push(""),
            "" => return Err("empty path segment (`//`)".into()),
            s if s.contains(['{', '}']) => {
                return Err(format!(
                    "segment `{s}`: `{ONE_SEGMENT}` and `{ANY_SEGMENTS}` must be a whole segment, and no other `{{` or `}}` is allowed"
                ));
            }
            s if s.contains('*') => {
                return Err(format!(
                    "segment `{s}`: a `*` wildcard cannot be combined with `{ONE_SEGMENT}` / `{ANY_SEGMENTS}`"
                ));
            }
            s => {
                if let Some(c) = s.chars().find(|c| !literal_char(*c)) {
                    return Err(format!(
                        "segment `{s}`: `{c}` is not allowed in a path template (letters, digits and -._~%!$&'()+,;:@)"
                    ));
                }
                out.push(s);
            }
        }
    }
    Ok(format!("/{}", out.join("/")))
}
