//! `baton`: the operator CLI. Runs the pipeline on the embedded bus and store (local
//! mode): demo, ingest, status, retry, approve/reject, rollback, dead letters, and event
//! validation. Every command takes `--json` for scripts; operator errors are one line on
//! stderr and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod audit;
mod aws_mode;
mod commands;
mod demo;
mod output;
mod react;

/// Baton: an event-driven deploy pipeline. A registry push starts a run; test, gate,
/// approve, deploy, promote and notify are separate, retryable stages.
#[derive(Debug, Parser)]
#[command(name = "baton", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Pipeline configuration file.
    #[arg(
        long,
        global = true,
        env = "BATON_CONFIG",
        default_value = "baton.yaml"
    )]
    pub config: PathBuf,
    /// State directory of the embedded bus and store.
    #[arg(long, global = true, env = "BATON_STATE_DIR", default_value = ".baton")]
    pub state_dir: PathBuf,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// A deployed AWS stack: retry, dlq and react work on it instead of the local state.
    #[arg(long, global = true, env = "BATON_STACK")]
    pub stack: Option<String>,
    /// Log more (-v info, -vv debug) on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a bundled sample push through every stage in a fresh state directory.
    Demo {
        /// Where the demo keeps its state, configuration and manifests (wiped first).
        #[arg(long, default_value = ".baton/demo")]
        dir: PathBuf,
    },
    /// Feed a registry notification (ECR event or distribution envelope) to ingest and
    /// run the pipeline until it waits.
    Ingest {
        /// JSON file with the notification.
        file: PathBuf,
    },
    /// List runs, or show one run's stages, timeline and events.
    Status {
        /// Run id (or a unique prefix of at least 4 characters).
        run: Option<String>,
        /// Keep watching: redraw as runs advance (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
        /// Without RUN: the newest this many runs.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
    },
    /// Receive registry webhooks and approval decisions over HTTP and run the pipeline.
    Serve {
        /// Address to listen on, `ip:port` (default: `serve.listen` of the configuration).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Re-run exactly one stage of a run from its recorded input event.
    Retry {
        run: String,
        /// ingest, test, gate, approve, deploy or promote.
        stage: String,
        /// Environment, for per-environment stages that ran in more than one.
        #[arg(long)]
        env: Option<String>,
    },
    /// Approve a run's deploy to an environment.
    Approve {
        run: String,
        #[arg(long)]
        env: String,
        /// Who approves (must be an approver of the environment).
        #[arg(long = "as", value_name = "WHO")]
        who: String,
        #[arg(long)]
        comment: Option<String>,
        /// Also release the environment's rollback hold, so this run may deploy there.
        #[arg(long)]
        release_hold: bool,
    },
    /// Reject a run's deploy to an environment.
    Reject {
        run: String,
        #[arg(long)]
        env: String,
        #[arg(long = "as", value_name = "WHO")]
        who: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Put an earlier image back in an environment (bypasses newer-wins).
    Rollback {
        app: String,
        #[arg(long)]
        env: String,
        /// Digest (or at least 7 hex digits of it) from the environment's history;
        /// the image live before the current one when absent.
        #[arg(long)]
        to: Option<String>,
        #[arg(long = "as", value_name = "WHO")]
        who: Option<String>,
        /// Why, recorded on the hold, the rolled-back run and the workload's change cause.
        #[arg(long)]
        reason: Option<String>,
    },
    /// DORA's four keys per app and environment from the run records: deployments (per
    /// day), lead time push → deployed, change failure rate, time to restore.
    Dora {
        /// The window, back from now: `30d`, `12h`, `2w`.
        #[arg(long, default_value = "30d")]
        since: String,
    },
    /// What is live in each app's environments: image, since when, by which run and
    /// whose approval; what waits for approval; freezes, holds, the last failed deploy.
    Envs,
    /// Stop the line: deploys to the scope (everything; --env in every app; --app; both)
    /// wait until `baton unfreeze`. Approvals may still be given; rollbacks still go.
    Freeze {
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        env: Option<String>,
        /// Shown to everyone it stops, and kept with who froze it.
        #[arg(long)]
        reason: String,
        #[arg(long = "as", value_name = "WHO")]
        who: Option<String>,
    },
    /// Break-glass: ask to deploy RUN to a frozen --env anyway, with a reason; a second
    /// approver of that environment approves it with --approve. Holds are not overridden.
    BreakGlass {
        run: String,
        #[arg(long)]
        env: String,
        #[arg(long, required_unless_present = "approve")]
        reason: Option<String>,
        #[arg(long)]
        approve: bool,
        #[arg(long = "as", value_name = "WHO")]
        who: Option<String>,
    },
    /// Lift the freeze set on exactly this scope.
    Unfreeze {
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long = "as", value_name = "WHO")]
        who: Option<String>,
    },
    /// What stops the line now: freezes set by hand, rollback holds, open freeze windows.
    Freezes,
    /// Rollback holds: `baton rollback` holds the environment on the image it put back;
    /// newer runs wait there until the hold is released.
    Hold {
        #[command(subcommand)]
        action: HoldAction,
    },
    /// What each stage may do (AWS template and Kubernetes RBAC) and what is wrong with it;
    /// exits 1 when there are findings.
    Audit {
        /// The stack template.
        #[arg(long, default_value = "infra/template.yaml")]
        template: PathBuf,
        /// Directory of Kubernetes RBAC manifests.
        #[arg(long, default_value = "infra/k8s")]
        k8s: PathBuf,
        /// Also read the deployed roles' inline policies through IAM and report drift
        /// (needs --stack; AWS credentials, region and endpoint from the standard chain).
        #[arg(long)]
        live: bool,
        /// Also ask a cluster what each stage's identity may really do (a rules review
        /// per namespace, impersonating the identities --k8s binds) and report drift from
        /// --k8s: the kubeconfig context of someone allowed to impersonate.
        #[arg(long, value_name = "CONTEXT")]
        kube_context: Option<String>,
        /// The kubeconfig of --kube-context (default $KUBECONFIG or ~/.kube/config).
        #[arg(long, value_name = "PATH", requires = "kube_context")]
        kubeconfig: Option<PathBuf>,
        /// More namespaces to check with --kube-context, where no stage should hold
        /// anything (e.g. production namespaces of other teams); the namespaces of --k8s,
        /// default and kube-system are always checked.
        #[arg(
            long = "kube-namespace",
            value_name = "NAMESPACE",
            requires = "kube_context"
        )]
        kube_namespaces: Vec<String>,
    },
    /// Reactions: notifications attached to event types without touching stage code
    /// (SNS subscriptions with --stack, the configuration file otherwise).
    React {
        #[command(subcommand)]
        action: ReactAction,
    },
    /// Remove finished runs' records and old deploy history as the configuration's
    /// `retention` says (runs live somewhere, waiting or running, and each app's newest
    /// are kept; each environment keeps its newest deploys); with --stack, in the
    /// stack's bucket.
    Gc {
        /// Say what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Dead letters of the embedded bus.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Baton events and samples.
    Events {
        #[command(subcommand)]
        action: EventsAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum HoldAction {
    /// Release the hold on APP's --env: newer runs deploy there again.
    Release {
        app: String,
        #[arg(long)]
        env: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long = "as", value_name = "WHO")]
        who: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead-lettered messages (with --stack: of one stage's DLQ).
    List {
        /// A stage name (required with --stack), or notify.<reaction> locally.
        subscription: Option<String>,
    },
    /// Move dead letters back to their queues and deliver them.
    Redrive {
        /// Only this subscription (a stage name, or notify.<reaction>).
        subscription: Option<String>,
    },
}

// Parsed once per command: the size of `Add` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ReactAction {
    /// Add a reaction to event types.
    Add {
        /// Event types, comma-separated (e.g. deploy.failed,tests.failed).
        #[arg(long, value_delimiter = ',', required = true)]
        on: Vec<String>,
        /// E-mail address (SNS e-mail subscription; AWS only).
        #[arg(long, group = "target")]
        email: Option<String>,
        /// URL to POST the event to.
        #[arg(long, group = "target")]
        webhook: Option<String>,
        /// SQS queue ARN (AWS only).
        #[arg(long, group = "target")]
        sqs: Option<String>,
        /// Append to the notifications log (local only).
        #[arg(long, group = "target")]
        log: bool,
        /// Reaction name (local only; derived from the types when absent).
        #[arg(long)]
        name: Option<String>,
        /// Webhook body: generic, slack, teams, dingtalk, feishu or discord (local only).
        #[arg(long, requires = "webhook")]
        format: Option<String>,
        /// DingTalk/Feishu: the variable holding the robot's signing secret (local only).
        #[arg(long, requires = "webhook")]
        secret_env: Option<String>,
        /// E-mail sender (local only; taken from an e-mail reaction already in the
        /// configuration when absent).
        #[arg(long, requires = "email")]
        from: Option<String>,
        /// SMTP server as HOST or HOST:PORT (local only; taken from an e-mail reaction
        /// already in the configuration when absent).
        #[arg(long, requires = "email")]
        smtp: Option<String>,
        /// starttls (default), tls or none (none only to a loopback server).
        #[arg(long, requires = "smtp")]
        smtp_tls: Option<String>,
        /// SMTP user; give --smtp-password-env with it.
        #[arg(long, requires = "smtp")]
        smtp_user: Option<String>,
        /// The variable holding the SMTP password.
        #[arg(long, requires = "smtp_user")]
        smtp_password_env: Option<String>,
    },
    /// List reactions.
    List,
    /// Remove a reaction (its name locally, its subscription ARN with --stack).
    Remove { reaction: String },
}

#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Check files: Baton events, ECR events, distribution envelopes, SNS and SQS envelopes.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print (or write) the JSON Schemas of Baton's events.
    Schema {
        /// Write one file per event type into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// A reporting command whose reader goes away (`baton --json status | head`) ends
/// quietly, as any Unix filter does, instead of panicking in `println!` on EPIPE: the
/// default SIGPIPE action is restored (Rust ignores the signal). `baton serve` keeps it
/// ignored: a closed pipe or socket must never stop the server (its sockets never raise
/// it; Rust sends with MSG_NOSIGNAL).
fn end_quietly_on_closed_stdout(command: &Command) {
    if !matches!(command, Command::Serve { .. }) {
        // SAFETY: setting a signal's disposition to its default, before any thread runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

/// Two malloc arenas instead of glibc's default of eight per CPU: file work runs on
/// tokio's blocking pool, whose threads come and go, and each arena they touch keeps the
/// peak it reached. With the default, `baton serve` in the soak test held 11% more after
/// 5,000 runs than after 1,000 (freed, unreturned memory; 5% with two arenas).
/// `MALLOC_ARENA_MAX` still overrides.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first in `main`, before any other thread exists; `mallopt` only
        // sets an allocator parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> ExitCode {
    cap_malloc_arenas();
    baton::adapters::sandbox::protect_this_process();
    let cli = Cli::parse();
    end_quietly_on_closed_stdout(&cli.command);
    init_tracing(cli.global.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(commands::run(cli));
    // Deliveries run on threads of their own; one still running (a drain given up, as
    // `baton serve` stopping gives it up) gets a moment to end, then is left: its message
    // is still pending in the bus and is delivered again by the next drain.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
