//! `format = "template"`: a sink file rendered from the operator's own template (an
//! application's `.env`, YAML or JSON config), the way Vault Agent renders templates.
//!
//! The language is minijinja's (Jinja2): a template sees only the token answer's fields
//! (`provider`, `account`, `access_token`, `token_type`, `expires_at`, `refresh_after`,
//! `status`, `headers`). There is no loader, so `include`, `import` and `extends` reach no
//! file; no function reads a file, the environment or the network; a name the answer does
//! not have is an error (strict undefined), found when the configuration is read; and each
//! render has a fuel budget, so a runaway loop stops. Output is written as rendered: no
//! escaping, the format is the template's.

use std::path::PathBuf;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::api::served::ServedToken;

/// Instructions one render may spend: far more than any config file needs, far less than a
/// loop that would hold the sinks task.
const FUEL: u64 = 100_000;

/// A template, read and checked when the configuration was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkTemplate {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// Its text.
    pub source: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.set_keep_trailing_newline(true);
    env
}

/// Compiles `source` and renders it once with a sample answer, so a syntax error or a name
/// the answer lacks is found when the configuration is read, not at the first rotation.
pub fn check(source: &str) -> Result<(), String> {
    let sample = serde_json::json!({
        "provider": "shippo", "account": "sample", "access_token": "sample-token",
        "token_type": "Bearer", "expires_at": null, "refresh_after": null, "status": "active",
        "headers": {"Authorization": "Bearer sample-token", "Shippo-API-Version": "2018-02-08"},
    });
    render_with(source, &sample).map(|_| ())
}

/// Renders the template with the served token's answer.
pub fn render(template: &SinkTemplate, token: &ServedToken) -> Result<Vec<u8>, String> {
    let answer: serde_json::Value = serde_json::from_slice(&token.json)
        .map_err(|e| format!("the token answer is not JSON: {e}"))?;
    render_with(&template.source, &answer).map(String::into_bytes)
}

fn render_with(source: &str, answer: &serde_json::Value) -> Result<String, String> {
    let env = environment();
    // The error names the line and what is wrong, never a value: the token is in the context.
    env.render_str(source, minijinja::Value::from_serialize(answer))
        .map_err(|e| {
            let what = match e.detail() {
                Some(detail) => format!("{}: {detail}", e.kind()),
                None => e.kind().to_string(),
            };
            match e.line() {
                Some(line) => format!("line {line}: {what}"),
                None => what,
            }
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn token() -> ServedToken {
        let json = serde_json::json!({
            "provider": "shiphero", "account": "acme", "access_token": "eyJ.tok",
            "token_type": "Bearer", "expires_at": "2027-01-04T10:00:00Z",
            "refresh_after": "2026-12-21T10:00:00Z", "status": "active",
            "headers": {"Authorization": "Bearer eyJ.tok"},
        });
        ServedToken {
            access_token: crate::secret::Secret::new("eyJ.tok"),
            fingerprint: "fp".into(),
            json: axum::body::Bytes::from(json.to_string()),
            headers: vec![("Authorization".into(), "Bearer eyJ.tok".into())],
        }
    }

    fn template(source: &str) -> SinkTemplate {
        SinkTemplate {
            path: "/etc/shiptoken/t".into(),
            source: source.into(),
        }
    }

    #[test]
    fn a_template_gets_the_token_its_expiry_and_headers() {
        let t = template(
            "SHIPHERO_TOKEN={{ access_token }}\nEXPIRES={{ expires_at }}\n\
             {% for name, value in headers|items %}{{ name }}: {{ value }}\n{% endfor %}",
        );
        let out = String::from_utf8(render(&t, &token()).unwrap()).unwrap();
        assert_eq!(
            out,
            "SHIPHERO_TOKEN=eyJ.tok\nEXPIRES=2027-01-04T10:00:00Z\nAuthorization: Bearer eyJ.tok\n"
        );
        let yaml = template("shiphero:\n  token: \"{{ access_token }}\"\n");
        assert_eq!(
            render(&yaml, &token()).unwrap(),
            b"shiphero:\n  token: \"eyJ.tok\"\n"
        );
    }

    #[test]
    fn mistakes_and_escapes_are_refused_when_the_configuration_is_read() {
        for (source, what) in [
            ("{{ acess_token }}", "line 1: undefined value"),
            ("{% if %}", "syntax error"),
            ("{% include '/etc/shadow' %}", "unknown statement include"),
            (
                "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
                "fuel",
            ),
        ] {
            let e = check(source).unwrap_err();
            assert!(e.contains(what), "{source}: {e}");
            assert!(!e.contains("sample-token"), "{source}: {e}");
        }
        assert!(check("TOKEN={{ access_token }}\n").is_ok());
    }
}
