//! `baton react` on the embedded runtime: reactions live in the configuration file. The
//! file is edited as text (comments and layout stay), and the result is validated before
//! it is written: an invalid edit changes nothing.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use baton::config::{Config, NotifyConfig};
use serde_json::json;

use crate::Global;
use crate::aws_mode::Target;

fn save_if_valid(g: &Global, text: &str) -> Result<()> {
    let base = g
        .config
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    Config::from_yaml(text, &base, &g.config.display().to_string())?;
    std::fs::write(&g.config, text).with_context(|| format!("cannot write {}", g.config.display()))
}

/// The line range of the top-level `reactions:` block, if any.
fn block(lines: &[&str]) -> Option<(usize, usize)> {
    let start = lines.iter().position(|l| l.starts_with("reactions:"))?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| !l.is_empty() && !l.starts_with(' ') && !l.starts_with('#'))
        .map(|i| start + 1 + i)
        .unwrap_or(lines.len());
    Some((start, end))
}

/// What a reaction in the configuration file may say besides its target.
#[derive(Debug, Default)]
pub struct LocalOptions {
    pub format: Option<String>,
    pub secret_env: Option<String>,
    pub from: Option<String>,
    pub smtp: Option<String>,
    pub smtp_tls: Option<String>,
    pub smtp_user: Option<String>,
    pub smtp_password_env: Option<String>,
}

impl LocalOptions {
    pub fn is_empty(&self) -> bool {
        [
            &self.format,
            &self.secret_env,
            &self.from,
            &self.smtp,
            &self.smtp_tls,
            &self.smtp_user,
            &self.smtp_password_env,
        ]
        .iter()
        .all(|o| o.is_none())
    }
}

/// The `email` of a local e-mail reaction to `to`: sender and SMTP server from the
/// options, or else from an e-mail reaction already in the configuration.
fn email_notify(g: &Global, to: &str, o: &LocalOptions) -> Result<serde_json::Value> {
    let existing = Config::load(&g.config).ok().and_then(|c| {
        c.reactions.iter().find_map(|r| match &r.notify {
            NotifyConfig::Email(e) => Some(e.clone()),
            _ => None,
        })
    });
    let smtp = match &o.smtp {
        Some(hostport) => {
            let (host, port) =
                match hostport.rsplit_once(':') {
                    Some((h, p)) if !h.contains(':') => (
                        h.to_string(),
                        Some(p.parse::<u16>().with_context(|| {
                            format!("--smtp {hostport}: the port is not a number")
                        })?),
                    ),
                    _ => (hostport.clone(), None),
                };
            let mut s = json!({"host": host});
            if let Some(p) = port {
                s["port"] = json!(p);
            }
            if let Some(t) = &o.smtp_tls {
                s["tls"] = json!(t);
            }
            if let Some(u) = &o.smtp_user {
                s["username"] = json!(u);
            }
            if let Some(v) = &o.smtp_password_env {
                s["password_env"] = json!(v);
            }
            s
        }
        None => match &existing {
            Some(e) => serde_json::to_value(&e.smtp)?,
            None => bail!(
                "no SMTP server to send through: give --smtp HOST[:PORT] and --from ADDR (there is no e-mail reaction in {} to take them from)",
                g.config.display()
            ),
        },
    };
    let from = match (&o.from, &existing) {
        (Some(f), _) => f.clone(),
        (None, Some(e)) => e.from.clone(),
        (None, None) => bail!("give --from ADDR: the sender of the e-mails"),
    };
    Ok(json!({"email": {"to": [to], "from": from, "smtp": smtp}}))
}

pub fn add(
    g: &Global,
    types: &[String],
    target: Target,
    name: Option<String>,
    o: &LocalOptions,
) -> Result<ExitCode> {
    let notify = match &target {
        Target::Webhook(url) => {
            let mut w = json!({"url": url});
            if let Some(f) = &o.format {
                w["format"] = json!(f);
            }
            if let Some(s) = &o.secret_env {
                w["secret_env"] = json!(s);
            }
            json!({ "webhook": w }).to_string()
        }
        Target::Log => "{ log: {} }".to_string(),
        Target::Email(to) => email_notify(g, to, o)?.to_string(),
        Target::Sqs(_) => bail!(
            "SQS reactions are SNS subscriptions: use --stack NAME (locally, use --webhook, --email or --log)"
        ),
    };
    let name = name.unwrap_or_else(|| {
        let kind = match target {
            Target::Log => "log",
            Target::Email(_) => "email",
            _ => "webhook",
        };
        format!("{kind}-{}", types.join("-").replace('.', "-"))
    });
    let item = format!(
        "  - name: {name}\n    on: {{ type: [{}] }}\n    notify: {notify}\n",
        types.join(", ")
    );
    let text = std::fs::read_to_string(&g.config)
        .with_context(|| format!("cannot read {}", g.config.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let new = match block(&lines) {
        Some((start, _)) if lines[start].trim_end() == "reactions: []" => {
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            out[start] = "reactions:".into();
            out.insert(start + 1, item.trim_end().to_string());
            out.join("\n") + "\n"
        }
        Some((_, end)) => {
            // After the block's last non-blank line.
            let mut at = end;
            while at > 0 && lines[at - 1].trim().is_empty() {
                at -= 1;
            }
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            out.insert(at, item.trim_end().to_string());
            out.join("\n") + "\n"
        }
        None => format!(
            "{}\nreactions:\n{item}",
            text.trim_end_matches('\n').to_string() + "\n"
        ),
    };
    save_if_valid(g, &new)?;
    if g.json {
        println!("{}", json!({"added": name, "on": types}));
    } else {
        println!(
            "reaction {name} added to {}: it receives {}",
            g.config.display(),
            types.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn list(g: &Global) -> Result<ExitCode> {
    let cfg = Config::load(&g.config)?;
    let rows: Vec<_> = cfg
        .reactions
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "on": r.on.json(),
                "notify": match &r.notify {
                    NotifyConfig::Webhook(w) => json!({"webhook": w.url.clone().unwrap_or_else(|| format!("${}", w.url_env.clone().unwrap_or_default()))}),
                    NotifyConfig::Log(l) => json!({"log": l.path}),
                    NotifyConfig::Email(e) => json!({"email": e.to}),
                    NotifyConfig::Cdevents(c) => json!({"cdevents": c.url.clone().unwrap_or_else(|| format!("${}", c.url_env.clone().unwrap_or_default()))}),
                },
            })
        })
        .collect();
    if g.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no reactions in {}", g.config.display());
    } else {
        for r in &rows {
            println!(
                "{:<24} {:<50} {}",
                r["name"].as_str().unwrap_or(""),
                r["on"],
                r["notify"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn remove(g: &Global, name: &str) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&g.config)
        .with_context(|| format!("cannot read {}", g.config.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let Some((start, end)) = block(&lines) else {
        bail!("{} has no reactions", g.config.display());
    };
    let Some(first) =
        (start + 1..end).find(|&i| lines[i].trim_start() == format!("- name: {name}"))
    else {
        bail!(
            "no reaction named {name} in {} (see `baton react list`)",
            g.config.display()
        );
    };
    let indent = lines[first].len() - lines[first].trim_start().len();
    let last = (first + 1..end)
        .find(|&i| {
            let l = lines[i];
            let ind = l.len() - l.trim_start().len();
            !l.trim().is_empty() && ind <= indent
        })
        .unwrap_or(end);
    let mut out: Vec<&str> = lines[..first].to_vec();
    out.extend_from_slice(&lines[last..]);
    let mut new = out.join("\n") + "\n";
    if block(&out).is_some_and(|(s, e)| {
        out[s + 1..e]
            .iter()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    }) {
        new = new.replacen("reactions:\n", "reactions: []\n", 1);
    }
    save_if_valid(g, &new)?;
    if g.json {
        println!("{}", json!({"removed": name}));
    } else {
        println!("reaction {name} removed from {}", g.config.display());
    }
    Ok(ExitCode::SUCCESS)
}
