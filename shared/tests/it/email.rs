//! E-mail reactions against a real SMTP server (aiosmtpd): plain on loopback, STARTTLS
//! with a private CA, templates over the event's fields, retries then a dead letter
//! while the server is down, and configurations that would send a password in clear
//! refused at load.

use baton::config::Config;
use chrono::Utc;

use crate::{Setup, setup};

fn reaction(port: u16, extra: &str) -> String {
    format!(
        "  - name: mail\n    on: {{ type: [deploy.succeeded] }}\n    notify:\n      email:\n        to: [\"Ops <ops@example.com>\"]\n        from: baton@example.com\n        smtp: {{ host: 127.0.0.1, port: {port}{extra} }}\n"
    )
}

#[tokio::test]
async fn a_deploy_sends_an_email_with_the_run_link() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = baton_testkit::smtp::start(dir.path(), None).await;
    let env = setup(Setup {
        reactions: reaction(smtp.port, ", tls: none"),
        ..Setup::default()
    });
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    env.drain().await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "one deploy.succeeded (staging): {mails:#?}");
    let m = &mails[0];
    assert!(m.contains("To: Ops <ops@example.com>"), "{m}");
    assert!(m.contains("From: baton@example.com"), "{m}");
    let subject = m.lines().find(|l| l.starts_with("Subject: ")).unwrap();
    assert!(subject.starts_with("Subject: [baton] "), "{subject}");
    assert!(
        m.contains(&format!(
            "Run: http://127.0.0.1:8080/runs/{}",
            env.run_of(&img)
        )),
        "{m}"
    );
    assert!(m.contains("Environment: staging"), "{m}");
}

#[tokio::test]
async fn starttls_with_a_private_ca_and_templates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = baton_testkit::tls::server_cert(dir.path(), "smtp", "IP:127.0.0.1");
    let smtp = baton_testkit::smtp::start(dir.path(), Some((&certs.cert, &certs.key))).await;
    let ca = certs.ca.display().to_string();
    let env = setup(Setup {
        reactions: reaction(smtp.port, &format!(", tls: starttls, ca_file: {ca}"))
            + "        subject: \"{{ app }} {{ environment }} {{ tag }} is live\"\n        body: \"{{ image }} by run {{ run }}\"\n",
        ..Setup::default()
    });
    let img = env.push("1.0.0", "ci-bot", Utc::now()).await;
    env.drain().await;
    // Bodies are quoted-printable: join its soft line breaks.
    let mails: Vec<String> = smtp
        .messages()
        .iter()
        .map(|m| m.replace("=\n", ""))
        .collect();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert!(
        mails[0].contains("Subject: web staging 1.0.0 is live"),
        "{}",
        mails[0]
    );
    assert!(
        mails[0].contains(&format!("{} by run {}", img.reference(), env.run_of(&img))),
        "{}",
        mails[0]
    );
}

#[tokio::test]
async fn a_server_that_is_down_is_retried_then_dead_lettered() {
    let port = baton_testkit::free_port();
    let env = setup(Setup {
        reactions: reaction(port, ", tls: none, timeout: 2s"),
        max_attempts: 2,
        ..Setup::default()
    });
    env.push("1.0.0", "ci-bot", Utc::now()).await;
    let rep = env.local.drain(&Default::default(), |_| {}).await.unwrap();
    assert_eq!(rep.dead, 1, "the reaction's delivery, after its attempts");
    let dead = env.local.pipeline.ports.bus.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].subscription.contains("mail"),
        "{:?}",
        dead[0].subscription
    );
}

#[tokio::test]
async fn a_password_is_never_sent_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, want) in [
        (
            ", tls: none, username: baton, password_env: SMTP_PASSWORD",
            "a password is never sent without TLS",
        ),
        (", username: baton", "username and password_env go together"),
    ] {
        let cfg = Setup {
            reactions: reaction(25, extra),
            ..Setup::default()
        }
        .config();
        std::fs::write(dir.path().join("baton.yaml"), cfg).unwrap();
        let e = Config::load(&dir.path().join("baton.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(want) && e.contains("reactions[0].notify.email.smtp"),
            "{e}"
        );
    }
    let cfg = Setup {
        reactions: reaction(25, ", tls: none").replace("host: 127.0.0.1", "host: smtp.example.com"),
        ..Setup::default()
    }
    .config();
    std::fs::write(dir.path().join("baton.yaml"), cfg).unwrap();
    let e = Config::load(&dir.path().join("baton.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("none is allowed only to a server on loopback"),
        "{e}"
    );
    let cfg = Setup {
        reactions: reaction(25, "").replace("ops@example.com", "not an address"),
        ..Setup::default()
    }
    .config();
    std::fs::write(dir.path().join("baton.yaml"), cfg).unwrap();
    let e = Config::load(&dir.path().join("baton.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("reactions[0].notify.email.to[0]"), "{e}");
}
