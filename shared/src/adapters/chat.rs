//! Webhook bodies in the shapes chat tools accept: Slack Block Kit, a Microsoft Teams
//! message with an Adaptive Card, a DingTalk robot `markdown` message, a Feishu/Lark
//! robot interactive card, a Discord embed, Baton's generic body, or the user's
//! template; and the DingTalk and Feishu robot signatures. Pure functions over an event:
//! the notifier sends what they build.
//!
//! Shapes follow the vendors' documentation: Slack "Sending messages using incoming
//! webhooks" and Block Kit (`section`, `context`, `actions` blocks; mrkdwn text at most
//! 3,000 characters); Teams "Create and send messages" for Workflows/incoming webhooks
//! (`type: message`, one attachment of content type
//! `application/vnd.microsoft.card.adaptive`, AdaptiveCard 1.4); DingTalk custom robot
//! (`msgtype: markdown`, `markdown: {title, text}`; signing: `timestamp` in ms and `sign`
//! = Base64(HMAC-SHA256(secret, timestamp + "\n" + secret)) as query parameters);
//! Feishu custom bot (`msg_type: interactive`, `card: {header, elements}`; signing:
//! `timestamp` in seconds and `sign` = Base64(HMAC-SHA256 keyed by timestamp + "\n" +
//! secret over nothing) in the body); Discord "Execute Webhook" (`embeds[]` with
//! `title` ≤ 256, `description` ≤ 4,096, `fields` ≤ 25 of `value` ≤ 1,024, `color` an
//! integer, `timestamp` ISO 8601).

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::config::ChatFormat;
use crate::error::{Error, Result};
use crate::event::{Event, EventType};

/// The `action_id` of the Approve button (taken by `crate::slack`'s callback).
pub const APPROVE: &str = "baton-approve";
/// The `action_id` of the Reject button.
pub const REJECT: &str = "baton-reject";

/// The value the buttons carry: `<run>/<environment>`.
pub fn button_value(run: &str, environment: &str) -> String {
    format!("{run}/{environment}")
}

/// What an event means for the people reading the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Good,
    Bad,
    /// Somebody has to act (an approval is asked for).
    Attention,
}

pub fn outcome(ty: EventType) -> Outcome {
    match ty {
        EventType::TestsFailed
        | EventType::ApprovalRejected
        | EventType::DeployFailed
        | EventType::VerificationFailed
        | EventType::StageFailed => Outcome::Bad,
        EventType::ApprovalRequested | EventType::DeployWaiting => Outcome::Attention,
        EventType::ImageBuilt
        | EventType::TestsPassed
        | EventType::ApprovalGranted
        | EventType::DeploySucceeded
        | EventType::VerificationPassed
        | EventType::ImagePromoted => Outcome::Good,
    }
}

/// The event's fields as templates (e-mail, `format: template`) see them.
pub fn fields(event: &Event, link: Option<&str>) -> Value {
    let ctx = event.ctx();
    json!({
        "summary": event.summary(),
        "type": event.event_type().to_string(),
        "app": ctx.app,
        "environment": ctx.environment,
        "run": ctx.run,
        "image": ctx.image.reference(),
        "tag": ctx.image.tag,
        "digest": ctx.image.digest,
        "time": event.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "link": link,
        "event": event.to_envelope(),
    })
}

/// At most `max` characters of `s` (an ellipsis marks a cut).
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The title line: outcome mark, type, app and environment, tag.
fn title(event: &Event) -> String {
    let ctx = event.ctx();
    let mark = match outcome(event.event_type()) {
        Outcome::Good => "✅",
        Outcome::Bad => "❌",
        Outcome::Attention => "⏳",
    };
    format!(
        "{mark} {} {}{} {}",
        event.event_type(),
        ctx.app,
        ctx.environment
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default(),
        ctx.image.tag
    )
}

/// (name, value) facts every format shows.
fn facts(event: &Event) -> Vec<(&'static str, String)> {
    let ctx = event.ctx();
    let mut f = vec![("App", ctx.app.clone())];
    if let Some(e) = &ctx.environment {
        f.push(("Environment", e.clone()));
    }
    f.push(("Image", ctx.image.tagged()));
    f.push(("Digest", ctx.image.digest.to_string()));
    f.push(("Run", ctx.run.to_string()));
    f
}

/// Characters Slack's mrkdwn gives meaning to, escaped as its documentation says.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The body of a webhook reaction in `format` (`template` for `ChatFormat::Template`).
pub fn body(
    format: ChatFormat,
    reaction: &str,
    event: &Event,
    link: Option<&str>,
    template: Option<&str>,
) -> Result<Value> {
    let summary = event.summary();
    let title = title(event);
    let facts = facts(event);
    Ok(match format {
        ChatFormat::Generic => json!({
            "text": format!("[baton] {summary}"),
            "reaction": reaction,
            "event": event.to_envelope(),
        }),
        ChatFormat::Slack => {
            let mut blocks = vec![
                json!({"type": "section", "text": {"type": "mrkdwn",
                    "text": cut(&format!("*{}*\n{}", slack_escape(&title), slack_escape(&summary)), 3000)}}),
                json!({"type": "context", "elements": facts.iter().take(10).map(|(k, v)| json!({
                    "type": "mrkdwn", "text": cut(&format!("*{k}:* {}", slack_escape(v)), 3000)})).collect::<Vec<_>>()}),
            ];
            let mut buttons = vec![];
            // An approval request carries Approve and Reject: pressed, Slack calls
            // `POST /slack/interactions` (serve.slack), which decides as that approver.
            if matches!(event.payload, crate::event::Payload::ApprovalRequested(_))
                && let Some(env) = &event.ctx().environment
            {
                let value = button_value(event.ctx().run.as_str(), env);
                buttons.push(
                    json!({"type": "button", "style": "primary", "action_id": APPROVE,
                    "text": {"type": "plain_text", "text": "Approve"}, "value": value}),
                );
                buttons.push(json!({"type": "button", "style": "danger", "action_id": REJECT,
                    "text": {"type": "plain_text", "text": "Reject"}, "value": value,
                    "confirm": {"title": {"type": "plain_text", "text": "Reject?"},
                        "text": {"type": "plain_text", "text": "The run will not deploy to this environment."},
                        "confirm": {"type": "plain_text", "text": "Reject"}, "deny": {"type": "plain_text", "text": "Cancel"}}}));
            }
            if let Some(l) = link {
                buttons.push(json!({
                    "type": "button", "text": {"type": "plain_text", "text": "Open run"},
                    "url": cut(l, 3000), "action_id": "baton-open-run"}));
            }
            if !buttons.is_empty() {
                blocks.push(json!({"type": "actions", "elements": buttons}));
            }
            json!({"text": cut(&format!("[baton] {summary}"), 3000), "blocks": blocks})
        }
        ChatFormat::Teams => {
            let color = match outcome(event.event_type()) {
                Outcome::Good => "Good",
                Outcome::Bad => "Attention",
                Outcome::Attention => "Warning",
            };
            let mut card = json!({
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "color": color, "wrap": true},
                    {"type": "TextBlock", "text": summary, "wrap": true},
                    {"type": "FactSet", "facts": facts.iter().map(|(k, v)| json!({"title": k, "value": v})).collect::<Vec<_>>()},
                ],
            });
            if let Some(l) = link {
                card["actions"] =
                    json!([{"type": "Action.OpenUrl", "title": "Open run", "url": l}]);
            }
            json!({"type": "message", "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": card}]})
        }
        ChatFormat::Dingtalk => {
            let mut text = format!("#### {title}\n\n{summary}\n\n");
            for (k, v) in &facts {
                text.push_str(&format!("- {k}: {v}\n"));
            }
            if let Some(l) = link {
                text.push_str(&format!("\n[Open run]({l})\n"));
            }
            json!({"msgtype": "markdown", "markdown": {"title": cut(&title, 64), "text": text}})
        }
        ChatFormat::Feishu => {
            let template = match outcome(event.event_type()) {
                Outcome::Good => "green",
                Outcome::Bad => "red",
                Outcome::Attention => "orange",
            };
            let mut content = format!("{summary}\n");
            for (k, v) in &facts {
                content.push_str(&format!("\n**{k}**: {v}"));
            }
            let mut elements =
                vec![json!({"tag": "div", "text": {"tag": "lark_md", "content": content}})];
            if let Some(l) = link {
                elements.push(json!({"tag": "action", "actions": [{"tag": "button",
                    "text": {"tag": "plain_text", "content": "Open run"}, "url": l, "type": "primary"}]}));
            }
            json!({"msg_type": "interactive", "card": {
                "config": {"wide_screen_mode": true},
                "header": {"title": {"tag": "plain_text", "content": title}, "template": template},
                "elements": elements}})
        }
        ChatFormat::Discord => {
            let color = match outcome(event.event_type()) {
                Outcome::Good => 0x2E_B6_7D,
                Outcome::Bad => 0xE0_1E_5A,
                Outcome::Attention => 0xEC_B2_2E,
            };
            let mut embed = json!({
                "title": cut(&title, 256),
                "description": cut(&summary, 4096),
                "color": color,
                "fields": facts.iter().take(25).map(|(k, v)| json!({"name": k, "value": cut(v, 1024), "inline": true})).collect::<Vec<_>>(),
                "timestamp": event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            });
            if let Some(l) = link {
                embed["url"] = json!(l);
            }
            json!({"content": cut(&format!("[baton] {}", event.event_type()), 2000), "embeds": [embed]})
        }
        ChatFormat::Template => {
            let t = template.ok_or_else(|| {
                Error::invalid(
                    format!("reaction {reaction}"),
                    "format template needs a template",
                )
            })?;
            let text = minijinja::Environment::new()
                .render_str(t, fields(event, link))
                .map_err(|e| Error::permanent(format!("reaction {reaction} template"), e))?;
            serde_json::from_str(&text).map_err(|e| {
                Error::permanent(
                    format!("reaction {reaction} template"),
                    format!("does not render JSON ({e}); quote strings with |tojson"),
                )
            })?
        }
    })
}

fn hmac_b64(key: &[u8], msg: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(msg);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// DingTalk's `sign` for `timestamp_ms`: Base64(HMAC-SHA256(secret, "<ts>\n<secret>")),
/// sent URL-encoded as a query parameter beside `timestamp`.
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    hmac_b64(
        secret.as_bytes(),
        format!("{timestamp_ms}\n{secret}").as_bytes(),
    )
}

/// Feishu's `sign` for `timestamp_s`: Base64(HMAC-SHA256 keyed by "<ts>\n<secret>" over
/// an empty message), sent in the body beside `timestamp`.
pub fn feishu_sign(secret: &str, timestamp_s: i64) -> String {
    hmac_b64(format!("{timestamp_s}\n{secret}").as_bytes(), b"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::testing::sample;

    fn all() -> Vec<ChatFormat> {
        vec![
            ChatFormat::Generic,
            ChatFormat::Slack,
            ChatFormat::Teams,
            ChatFormat::Dingtalk,
            ChatFormat::Feishu,
            ChatFormat::Discord,
        ]
    }

    #[test]
    fn every_format_has_the_vendors_required_fields() {
        let e = sample("deploy.failed", |_| {});
        let url = "https://baton.example.com/runs/0123456789abcdef";
        let link = Some(url);
        for f in all() {
            let b = body(f, "chat", &e, link, None).unwrap();
            match f {
                ChatFormat::Generic => assert!(b["text"].as_str().unwrap().starts_with("[baton]")),
                ChatFormat::Slack => {
                    assert!(b["text"].is_string(), "fallback text");
                    let blocks = b["blocks"].as_array().unwrap();
                    assert_eq!(blocks[0]["type"], "section");
                    assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
                    assert!(blocks[0]["text"]["text"].as_str().unwrap().contains("❌"));
                    assert_eq!(blocks[1]["type"], "context");
                    assert!(blocks[1]["elements"].as_array().unwrap().len() <= 10);
                    assert_eq!(blocks[2]["elements"][0]["url"], url);
                }
                ChatFormat::Teams => {
                    assert_eq!(b["type"], "message");
                    let a = &b["attachments"][0];
                    assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
                    assert_eq!(a["content"]["type"], "AdaptiveCard");
                    assert_eq!(a["content"]["version"], "1.4");
                    assert_eq!(a["content"]["body"][0]["color"], "Attention");
                    assert_eq!(a["content"]["actions"][0]["type"], "Action.OpenUrl");
                }
                ChatFormat::Dingtalk => {
                    assert_eq!(b["msgtype"], "markdown");
                    assert!(b["markdown"]["title"].is_string());
                    let t = b["markdown"]["text"].as_str().unwrap();
                    assert!(t.starts_with("#### ") && t.contains(&format!("[Open run]({})", url)));
                }
                ChatFormat::Feishu => {
                    assert_eq!(b["msg_type"], "interactive");
                    assert_eq!(b["card"]["header"]["template"], "red");
                    assert_eq!(b["card"]["header"]["title"]["tag"], "plain_text");
                    assert_eq!(b["card"]["elements"][0]["text"]["tag"], "lark_md");
                    assert_eq!(b["card"]["elements"][1]["actions"][0]["url"], url);
                }
                ChatFormat::Discord => {
                    let em = &b["embeds"][0];
                    assert!(em["title"].as_str().unwrap().chars().count() <= 256);
                    assert!(em["color"].is_u64());
                    assert!(em["fields"].as_array().unwrap().len() <= 25);
                    assert_eq!(em["url"], url);
                    assert!(
                        chrono::DateTime::parse_from_rfc3339(em["timestamp"].as_str().unwrap())
                            .is_ok()
                    );
                }
                ChatFormat::Template => unreachable!(),
            }
        }
    }

    #[test]
    fn a_slack_approval_request_carries_approve_and_reject_buttons() {
        let e = sample("approval.requested", |_| {});
        let b = body(ChatFormat::Slack, "chat", &e, None, None).unwrap();
        let actions = &b["blocks"][2];
        assert_eq!(actions["type"], "actions");
        let value = format!("{}/production", e.ctx().run);
        assert_eq!(actions["elements"][0]["action_id"], APPROVE);
        assert_eq!(actions["elements"][0]["value"], value.as_str());
        assert_eq!(actions["elements"][1]["action_id"], REJECT);
        assert_eq!(actions["elements"][1]["style"], "danger");
        assert!(
            actions["elements"][1]["confirm"].is_object(),
            "a reject asks first"
        );
        // Other events have no decision buttons.
        let d = body(
            ChatFormat::Slack,
            "chat",
            &sample("deploy.failed", |_| {}),
            None,
            None,
        )
        .unwrap();
        assert_eq!(d["blocks"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn slack_text_is_escaped_and_long_text_cut_to_the_limits() {
        let e = sample("stage.failed", |v| {
            v["data"]["reason"] = json!(format!("<!channel> & {}", "x".repeat(5000)));
        });
        let b = body(ChatFormat::Slack, "chat", &e, None, None).unwrap();
        let text = b["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(
            !text.contains("<!channel>") && text.contains("&lt;!channel&gt;"),
            "{text}"
        );
        assert!(text.chars().count() <= 3000);
        assert_eq!(
            b["blocks"].as_array().unwrap().len(),
            2,
            "no button without a link"
        );
        let d = body(ChatFormat::Discord, "chat", &e, None, None).unwrap();
        assert!(
            d["embeds"][0]["description"]
                .as_str()
                .unwrap()
                .chars()
                .count()
                <= 4096
        );
    }

    #[test]
    fn a_template_renders_json_or_says_why_not() {
        let e = sample("deploy.succeeded", |_| {});
        let b = body(
            ChatFormat::Template,
            "chat",
            &e,
            Some("https://b/runs/x"),
            Some(r#"{"msg": {{ summary|tojson }}, "app": {{ app|tojson }}, "link": {{ link|tojson }}}"#),
        )
        .unwrap();
        assert_eq!(b["app"], "web");
        assert_eq!(b["link"], "https://b/runs/x");
        let err = body(
            ChatFormat::Template,
            "chat",
            &e,
            None,
            Some("not json {{ app }}"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not render JSON"), "{err}");
    }
}
