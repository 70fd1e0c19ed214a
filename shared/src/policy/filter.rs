//! SNS subscription filter policies on message attributes, with the semantics SNS
//! documents: keys are ANDed, the conditions listed under a key are ORed, and `$or`
//! combines whole sub-policies. Operators: exact string or number, `prefix`, `suffix`,
//! `equals-ignore-case`, `anything-but` (values, or a `prefix`/`suffix`), `numeric`
//! ranges and `exists`. The embedded bus uses this; in AWS, SNS evaluates the same JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{AttrValue, Attributes};

/// A parsed filter policy. Keeps its JSON so it can be handed to SNS unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterPolicy {
    json: Value,
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    keys: Vec<(String, Vec<Cond>)>,
    ors: Vec<Vec<Node>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Str(String),
    Num(f64),
    Prefix(String),
    Suffix(String),
    IgnoreCase(String),
    AnythingBut(Vec<Lit>),
    AnythingButPrefix(String),
    AnythingButSuffix(String),
    Numeric(Vec<(Cmp, f64)>),
    Exists(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl FilterPolicy {
    /// A policy that matches every message (no keys).
    pub fn all() -> FilterPolicy {
        FilterPolicy {
            json: Value::Object(Map::new()),
            root: Node {
                keys: vec![],
                ors: vec![],
            },
        }
    }

    /// `{"type": [t1, t2, …]}`.
    pub fn types<'a>(types: impl IntoIterator<Item = &'a str>) -> FilterPolicy {
        let list: Vec<Value> = types.into_iter().map(|t| Value::String(t.into())).collect();
        let json = serde_json::json!({ "type": list });
        // A list of plain strings always parses.
        FilterPolicy::parse(&json).unwrap_or_else(|_| FilterPolicy::all())
    }

    /// Parses a policy; the error names the key and says what is allowed.
    pub fn parse(json: &Value) -> Result<FilterPolicy, String> {
        let root = parse_node(json, "")?;
        Ok(FilterPolicy {
            json: json.clone(),
            root,
        })
    }

    /// The policy as SNS takes it.
    pub fn json(&self) -> &Value {
        &self.json
    }

    pub fn matches(&self, attrs: &Attributes) -> bool {
        node_matches(&self.root, attrs)
    }
}

impl Serialize for FilterPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

impl<'de> Deserialize<'de> for FilterPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        FilterPolicy::parse(&v).map_err(serde::de::Error::custom)
    }
}

fn parse_node(json: &Value, at: &str) -> Result<Node, String> {
    let obj = json.as_object().ok_or_else(|| {
        format!(
            "{}a filter policy must be an object of attribute names",
            here(at)
        )
    })?;
    let mut node = Node {
        keys: vec![],
        ors: vec![],
    };
    for (key, value) in obj {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        if key == "$or" {
            let alts = value
                .as_array()
                .filter(|a| a.len() >= 2)
                .ok_or_else(|| format!("{path}: must be a list of at least two policies"))?;
            let parsed = alts
                .iter()
                .enumerate()
                .map(|(i, a)| parse_node(a, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            node.ors.push(parsed);
            continue;
        }
        let list = value
            .as_array()
            .ok_or_else(|| format!("{path}: conditions must be a list, e.g. [\"image.built\"]"))?;
        if list.is_empty() {
            return Err(format!("{path}: the list of conditions is empty"));
        }
        let conds = list
            .iter()
            .map(|c| parse_cond(c).map_err(|e| format!("{path}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        node.keys.push((key.clone(), conds));
    }
    Ok(node)
}

fn here(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!("{at}: ")
    }
}

const OPERATORS: &str =
    "a string, a number, prefix, suffix, equals-ignore-case, anything-but, numeric, exists";

fn parse_cond(c: &Value) -> Result<Cond, String> {
    match c {
        Value::String(s) => Ok(Cond::Str(s.clone())),
        Value::Number(n) => Ok(Cond::Num(num(n)?)),
        Value::Object(o) if o.len() == 1 => {
            let (op, arg) = o.iter().next().ok_or("empty condition")?;
            match op.as_str() {
                "prefix" => Ok(Cond::Prefix(string_arg(op, arg)?)),
                "suffix" => Ok(Cond::Suffix(string_arg(op, arg)?)),
                "equals-ignore-case" => Ok(Cond::IgnoreCase(string_arg(op, arg)?)),
                "exists" => match arg {
                    Value::Bool(b) => Ok(Cond::Exists(*b)),
                    _ => Err("exists takes true or false".into()),
                },
                "anything-but" => parse_anything_but(arg),
                "numeric" => parse_numeric(arg),
                other => Err(format!("unknown operator {other:?} (allowed: {OPERATORS})")),
            }
        }
        Value::Object(_) => Err(format!(
            "a condition object has exactly one operator ({OPERATORS})"
        )),
        other => Err(format!("{other} is not a condition (allowed: {OPERATORS})")),
    }
}

fn num(n: &serde_json::Number) -> Result<f64, String> {
    n.as_f64()
        .ok_or_else(|| format!("{n} is not a usable number"))
}

fn string_arg(op: &str, arg: &Value) -> Result<String, String> {
    arg.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{op} takes a string"))
}

fn parse_anything_but(arg: &Value) -> Result<Cond, String> {
    let lit = |v: &Value| match v {
        Value::String(s) => Ok(Lit::Str(s.clone())),
        Value::Number(n) => Ok(Lit::Num(num(n)?)),
        other => Err(format!("anything-but cannot compare with {other}")),
    };
    match arg {
        Value::Array(items) if !items.is_empty() => Ok(Cond::AnythingBut(
            items.iter().map(lit).collect::<Result<_, _>>()?,
        )),
        Value::Object(o) if o.len() == 1 => match o.iter().next() {
            Some((k, v)) if k == "prefix" => Ok(Cond::AnythingButPrefix(string_arg(k, v)?)),
            Some((k, v)) if k == "suffix" => Ok(Cond::AnythingButSuffix(string_arg(k, v)?)),
            _ => Err(
                "anything-but takes a value, a list, or {\"prefix\": …} / {\"suffix\": …}".into(),
            ),
        },
        Value::String(_) | Value::Number(_) => Ok(Cond::AnythingBut(vec![lit(arg)?])),
        _ => Err("anything-but takes a value, a list, or {\"prefix\": …} / {\"suffix\": …}".into()),
    }
}

fn parse_numeric(arg: &Value) -> Result<Cond, String> {
    let items = arg
        .as_array()
        .filter(|a| a.len() == 2 || a.len() == 4)
        .ok_or("numeric takes [op, n] or [op, n, op, n], e.g. [\">=\", 0, \"<\", 10]")?;
    let mut out = vec![];
    for pair in items.chunks(2) {
        let op = match pair[0].as_str() {
            Some("=") => Cmp::Eq,
            Some("<") => Cmp::Lt,
            Some("<=") => Cmp::Le,
            Some(">") => Cmp::Gt,
            Some(">=") => Cmp::Ge,
            _ => {
                return Err(format!(
                    "numeric operator {} is not one of =, <, <=, >, >=",
                    pair[0]
                ));
            }
        };
        let n = match &pair[1] {
            Value::Number(n) => num(n)?,
            other => return Err(format!("numeric bound {other} is not a number")),
        };
        out.push((op, n));
    }
    if out.len() == 2 {
        let lower = matches!(out[0].0, Cmp::Gt | Cmp::Ge);
        let upper = matches!(out[1].0, Cmp::Lt | Cmp::Le);
        if !(lower && upper) || out[0].1 > out[1].1 {
            return Err("a numeric range is [\">\" or \">=\", low, \"<\" or \"<=\", high]".into());
        }
    }
    Ok(Cond::Numeric(out))
}

fn node_matches(node: &Node, attrs: &Attributes) -> bool {
    node.keys
        .iter()
        .all(|(key, conds)| conds.iter().any(|c| cond_matches(c, attrs.get(key))))
        && node
            .ors
            .iter()
            .all(|alts| alts.iter().any(|alt| node_matches(alt, attrs)))
}

fn cond_matches(cond: &Cond, value: Option<&AttrValue>) -> bool {
    let Some(value) = value else {
        return matches!(cond, Cond::Exists(false));
    };
    match value {
        AttrValue::String(s) => string_matches(cond, s),
        AttrValue::Number(n) => number_matches(cond, *n),
        // SNS: a condition matches an array attribute when it matches any element,
        // except anything-but, which must hold for every element.
        AttrValue::StringArray(items) => match cond {
            Cond::AnythingBut(_) | Cond::AnythingButPrefix(_) | Cond::AnythingButSuffix(_) => {
                !items.is_empty() && items.iter().all(|s| string_matches(cond, s))
            }
            Cond::Exists(b) => *b,
            _ => items.iter().any(|s| string_matches(cond, s)),
        },
    }
}

fn string_matches(cond: &Cond, s: &str) -> bool {
    match cond {
        Cond::Str(x) => x == s,
        Cond::Num(_) | Cond::Numeric(_) => false,
        Cond::Prefix(p) => s.starts_with(p.as_str()),
        Cond::Suffix(p) => s.ends_with(p.as_str()),
        Cond::IgnoreCase(x) => x.eq_ignore_ascii_case(s),
        Cond::AnythingBut(lits) => !lits.iter().any(|l| matches!(l, Lit::Str(x) if x == s)),
        Cond::AnythingButPrefix(p) => !s.starts_with(p.as_str()),
        Cond::AnythingButSuffix(p) => !s.ends_with(p.as_str()),
        Cond::Exists(b) => *b,
    }
}

fn number_matches(cond: &Cond, n: f64) -> bool {
    match cond {
        Cond::Num(x) => *x == n,
        Cond::Numeric(bounds) => bounds.iter().all(|(op, b)| match op {
            Cmp::Eq => n == *b,
            Cmp::Lt => n < *b,
            Cmp::Le => n <= *b,
            Cmp::Gt => n > *b,
            Cmp::Ge => n >= *b,
        }),
        Cond::AnythingBut(lits) => !lits.iter().any(|l| matches!(l, Lit::Num(x) if *x == n)),
        Cond::Exists(b) => *b,
        // String operators never match a Number attribute.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(pairs: &[(&str, AttrValue)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }
    fn s(v: &str) -> AttrValue {
        AttrValue::String(v.into())
    }
    fn n(v: f64) -> AttrValue {
        AttrValue::Number(v)
    }
    fn p(j: Value) -> FilterPolicy {
        FilterPolicy::parse(&j).unwrap()
    }
    fn built_staging() -> Attributes {
        attrs(&[
            ("type", s("image.built")),
            ("app", s("web")),
            ("environment", s("staging")),
            ("attempt", n(1.0)),
        ])
    }

    #[test]
    fn exact_string_or_within_key() {
        let pol = p(json!({"type": ["image.built", "tests.passed"]}));
        assert!(pol.matches(&built_staging()));
        assert!(!pol.matches(&attrs(&[("type", s("deploy.failed"))])));
        assert!(
            !pol.matches(&attrs(&[])),
            "missing attribute never matches a value"
        );
    }

    #[test]
    fn keys_are_anded() {
        let pol = p(json!({"type": ["image.built"], "app": ["api"]}));
        assert!(!pol.matches(&built_staging()));
        let pol = p(json!({"type": ["image.built"], "app": ["web"]}));
        assert!(pol.matches(&built_staging()));
    }

    #[test]
    fn prefix_suffix_and_ignore_case() {
        assert!(p(json!({"type": [{"prefix": "image."}]})).matches(&built_staging()));
        assert!(!p(json!({"type": [{"prefix": "deploy."}]})).matches(&built_staging()));
        assert!(p(json!({"type": [{"suffix": ".built"}]})).matches(&built_staging()));
        assert!(!p(json!({"type": [{"suffix": ".failed"}]})).matches(&built_staging()));
        assert!(p(json!({"app": [{"equals-ignore-case": "WEB"}]})).matches(&built_staging()));
        assert!(!p(json!({"app": [{"equals-ignore-case": "WEBS"}]})).matches(&built_staging()));
    }

    #[test]
    fn anything_but_values_and_prefix() {
        assert!(
            !p(json!({"environment": [{"anything-but": ["staging"]}]})).matches(&built_staging())
        );
        assert!(
            p(json!({"environment": [{"anything-but": ["production"]}]})).matches(&built_staging())
        );
        assert!(
            p(json!({"environment": [{"anything-but": "production"}]})).matches(&built_staging())
        );
        assert!(
            !p(json!({"type": [{"anything-but": {"prefix": "image."}}]})).matches(&built_staging())
        );
        assert!(
            p(json!({"type": [{"anything-but": {"prefix": "deploy."}}]})).matches(&built_staging())
        );
        assert!(
            !p(json!({"type": [{"anything-but": {"suffix": "built"}}]})).matches(&built_staging())
        );
        // anything-but needs the attribute to be present.
        assert!(!p(json!({"region": [{"anything-but": ["x"]}]})).matches(&built_staging()));
        // numeric anything-but
        assert!(!p(json!({"attempt": [{"anything-but": [1]}]})).matches(&built_staging()));
        assert!(p(json!({"attempt": [{"anything-but": [2, 3]}]})).matches(&built_staging()));
    }

    #[test]
    fn numeric_ranges_and_exact_numbers() {
        let a2 = attrs(&[("attempt", n(2.0))]);
        assert!(p(json!({"attempt": [{"numeric": [">", 1]}]})).matches(&a2));
        assert!(!p(json!({"attempt": [{"numeric": [">", 2]}]})).matches(&a2));
        assert!(p(json!({"attempt": [{"numeric": [">=", 2, "<", 3]}]})).matches(&a2));
        assert!(!p(json!({"attempt": [{"numeric": [">", 2, "<=", 5]}]})).matches(&a2));
        assert!(p(json!({"attempt": [{"numeric": ["=", 2]}]})).matches(&a2));
        assert!(p(json!({"attempt": [2]})).matches(&a2));
        assert!(!p(json!({"attempt": [3]})).matches(&a2));
        // numeric never matches a string attribute, a string never matches a number
        assert!(!p(json!({"type": [{"numeric": [">", 0]}]})).matches(&built_staging()));
        assert!(!p(json!({"attempt": ["2"]})).matches(&a2));
    }

    #[test]
    fn exists_true_and_false() {
        assert!(p(json!({"environment": [{"exists": true}]})).matches(&built_staging()));
        assert!(!p(json!({"environment": [{"exists": false}]})).matches(&built_staging()));
        let no_env = attrs(&[("type", s("image.built"))]);
        assert!(p(json!({"environment": [{"exists": false}]})).matches(&no_env));
        assert!(!p(json!({"environment": [{"exists": true}]})).matches(&no_env));
    }

    #[test]
    fn or_of_sub_policies() {
        let pol = p(json!({"$or": [{"type": ["deploy.failed"]}, {"app": ["web"]}]}));
        assert!(pol.matches(&built_staging()));
        assert!(!pol.matches(&attrs(&[("type", s("image.built")), ("app", s("api"))])));
    }

    #[test]
    fn string_array_attributes() {
        let a = attrs(&[("tags", AttrValue::StringArray(vec!["a".into(), "b".into()]))]);
        assert!(p(json!({"tags": ["b"]})).matches(&a));
        assert!(!p(json!({"tags": ["c"]})).matches(&a));
        assert!(p(json!({"tags": [{"anything-but": ["c"]}]})).matches(&a));
        assert!(!p(json!({"tags": [{"anything-but": ["a"]}]})).matches(&a));
    }

    #[test]
    fn empty_policy_matches_everything() {
        assert!(FilterPolicy::all().matches(&built_staging()));
        assert!(p(json!({})).matches(&attrs(&[])));
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        let e = FilterPolicy::parse(&json!({"type": "image.built"})).unwrap_err();
        assert!(e.contains("type") && e.contains("list"), "{e}");
        let e = FilterPolicy::parse(&json!({"type": [{"startswith": "x"}]})).unwrap_err();
        assert!(e.contains("startswith") && e.contains("prefix"), "{e}");
        let e = FilterPolicy::parse(&json!({"n": [{"numeric": ["~", 1]}]})).unwrap_err();
        assert!(e.contains("~"), "{e}");
        let e = FilterPolicy::parse(&json!({"n": [{"numeric": ["<", 5, ">", 1]}]})).unwrap_err();
        assert!(e.contains("range"), "{e}");
        let e = FilterPolicy::parse(&json!({"n": []})).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        assert!(FilterPolicy::parse(&json!(["type"])).is_err());
        assert!(FilterPolicy::parse(&json!({"$or": [{"a": ["x"]}]})).is_err());
    }
}
