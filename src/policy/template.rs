//! Upstream header templates: `{user.sub}`, `{app.id}`, `{plan}`,
//! `{policy}`, `{device.id}`, `{user.claims.NAME}`. Parsed at compile time,
//! so an unknown placeholder is a policy error, not a surprise at runtime.

/// A compiled template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    UserSub,
    UserIssuer,
    UserClaim(String),
    AppId,
    Plan,
    Policy,
    Route,
    DeviceId,
}

/// The values placeholders are filled from.
pub trait Vars {
    /// Why a value cannot be used (it is not fit to send, say).
    type Error;
    /// The value of `var`, or `None` when unknown for this request.
    fn value(&self, var: &Var) -> Result<Option<String>, Self::Error>;
}

impl Template {
    /// Parses `text`; `{` and `}` are only allowed around placeholders.
    /// The text around them must be fit for a header value as it is: no
    /// control character, no leading or trailing whitespace (which HTTP
    /// parsers strip); the values filled in are checked per request.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.chars().any(char::is_control) {
            return Err(format!("template {text:?} contains a control character"));
        }
        if text.trim_matches([' ', '\t']).len() != text.len() {
            return Err(format!(
                "template {text:?} starts or ends with whitespace, which HTTP strips"
            ));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in template {text:?}"))?;
            let name = &rest[start + 1..start + end];
            parts.push(Part::Var(parse_var(name)?));
            rest = &rest[start + end + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unmatched '}}' in template {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Renders the template; `Ok(None)` when any placeholder has no value
    /// (the header is then removed rather than sent half-filled), `Err`
    /// when `vars` refuses a value.
    pub fn render<V: Vars>(&self, vars: &V) -> Result<Option<String>, V::Error> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(var) => match vars.value(var)? {
                    Some(value) => out.push_str(&value),
                    None => return Ok(None),
                },
            }
        }
        Ok(Some(out))
    }
}

fn parse_var(name: &str) -> Result<Var, String> {
    Ok(match name {
        "user.sub" => Var::UserSub,
        "user.iss" => Var::UserIssuer,
        "app.id" => Var::AppId,
        "plan" => Var::Plan,
        "policy" => Var::Policy,
        "route" => Var::Route,
        "device.id" => Var::DeviceId,
        _ => match name.strip_prefix("user.claims.") {
            Some(claim) if !claim.is_empty() => Var::UserClaim(claim.to_owned()),
            _ => {
                return Err(format!(
                    "unknown placeholder {{{name}}}: expected user.sub, user.iss, \
                     user.claims.NAME, app.id, plan, policy, route or device.id"
                ));
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Vars for Fixed {
        type Error = String;
        fn value(&self, var: &Var) -> Result<Option<String>, String> {
            match var {
                Var::UserSub => Ok(Some("alice".into())),
                Var::UserClaim(c) if c == "tenant" => Ok(Some("t1".into())),
                Var::UserClaim(c) if c == "bad" => Err("refused".into()),
                _ => Ok(None),
            }
        }
    }

    #[test]
    fn renders_placeholders_and_text() {
        let t = Template::parse("sub={user.sub};tenant={user.claims.tenant}").unwrap();
        assert_eq!(
            t.render(&Fixed).unwrap().as_deref(),
            Some("sub=alice;tenant=t1")
        );
    }

    #[test]
    fn missing_value_renders_nothing_and_refusals_propagate() {
        let t = Template::parse("{app.id}").unwrap();
        assert_eq!(t.render(&Fixed), Ok(None));
        let t = Template::parse("{user.sub}{user.claims.bad}").unwrap();
        assert_eq!(t.render(&Fixed), Err("refused".to_owned()));
    }

    #[test]
    fn template_text_must_be_header_safe() {
        assert!(Template::parse("a\nb").is_err());
        assert!(Template::parse(" {user.sub}").is_err());
        assert!(Template::parse("{user.sub}\t").is_err());
        assert!(Template::parse("a b {user.sub}").is_ok());
    }

    #[test]
    fn rejects_unknown_and_unbalanced() {
        assert!(Template::parse("{nope}").is_err());
        assert!(Template::parse("{user.sub").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{user.claims.}").is_err());
    }
}
