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

pub fn add(g: &Global, types: &[String], target: Target, name: Option<String>) -> Result<ExitCode> {
    let notify = match &target {
        Target::Webhook(url) => format!("{{ webhook: {{ url: {} }} }}", json!(url)),
        Target::Log => "{ log: {} }".to_string(),
        Target::Email(_) => bail!(
            "e-mail reactions are SNS subscriptions: use --stack NAME (locally, use --webhook or --log)"
        ),
        Target::Sqs(_) => bail!(
            "SQS reactions are SNS subscriptions: use --stack NAME (locally, use --webhook or --log)"
        ),
    };
    let name = name.unwrap_or_else(|| {
        let kind = match target {
            Target::Log => "log",
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
