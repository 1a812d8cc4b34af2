// mimalloc: compile of large catalogs and the proxy's per-request allocations are
// allocator-bound; glibc malloc made a 10,000-Function compile ~50% slower.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fngate::api::Diagnostic;
use fngate::catalog::snapshot_from_texts;
use fngate::compile::{compile, CompileSettings};
use fngate::config::Settings;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fngate",
    version,
    about = "Event gateway and HTTP ingress for OpenFunction-style functions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the functions of the catalog directory, following its changes.
    Run {
        #[arg(long, default_value = "config/fngate.yaml")]
        config: PathBuf,
    },
    /// Validate object files (or directories of them) and print every problem.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The Gateway (namespace/name) Functions default to.
        #[arg(long, default_value = "openfunction/openfunction")]
        gateway: String,
    },
    /// Print, as shell `export` lines, the environment a function's process needs to call
    /// fngate's Dapr API (ports, its API token, OpenFunction's FUNC_CONTEXT).
    Env {
        /// NAMESPACE/NAME of the Function.
        function: String,
        #[arg(long, default_value = "config/fngate.yaml")]
        config: PathBuf,
    },
    /// Print the compiled route table of the configured catalog.
    Routes {
        #[arg(long, default_value = "config/fngate.yaml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fngate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_settings(config: &Path) -> anyhow::Result<Settings> {
    if config.exists() {
        Ok(Settings::load(config)?)
    } else if config == Path::new("config/fngate.yaml") {
        Ok(Settings::defaults_in(Path::new("config")))
    } else {
        anyhow::bail!("settings file {} does not exist", config.display())
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let settings = load_settings(&config)?;
            fngate::server::run(settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { paths, gateway } => check(&paths, gateway),
        Command::Env { function, config } => {
            let settings = load_settings(&config)?;
            if settings.kubernetes.is_some() {
                anyhow::bail!(
                    "catalog.kubernetes is enabled: `fngate env` reads a catalog directory"
                );
            }
            let (namespace, name) = function
                .split_once('/')
                .with_context(|| format!("{function:?} is not NAMESPACE/NAME"))?;
            let mut catalog = fngate::catalog::DirCatalog::new(settings.catalog_dir.clone());
            let snapshot = catalog.scan();
            let plan = compile(&snapshot, &settings.compile_settings(), None);
            let env = fngate::runtime::function_env(
                &snapshot,
                &plan,
                settings.listen_dapr_grpc,
                settings.listen_dapr_http,
                settings.dapr_tls.is_some(),
                namespace,
                name,
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            for (k, v) in env {
                println!("{}", fngate::runtime::shell_export(&k, &v));
            }
            if let Some(tls) = &settings.dapr_tls {
                eprintln!(
                    "# TLS: the function must trust the CA that signed {} (Python: SSL_CERT_FILE and GRPC_DEFAULT_SSL_ROOTS_FILE_PATH; Node: NODE_EXTRA_CA_CERTS){}",
                    tls.cert.display(),
                    if tls.client_ca.is_some() {
                        ", and present a client certificate signed by dapr_api.tls.client_ca"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Routes { config, json } => {
            let settings = load_settings(&config)?;
            if settings.kubernetes.is_some() {
                anyhow::bail!(
                    "catalog.kubernetes is enabled: the routes come from the Kubernetes API; \
                     ask a running fngate: GET /routes on its admin listener"
                );
            }
            let mut catalog = fngate::catalog::DirCatalog::new(settings.catalog_dir.clone());
            let snapshot = catalog.scan();
            let plan = compile(&snapshot, &settings.compile_settings(), None);
            print_diagnostics(&plan.diagnostics);
            if json {
                println!("{}", serde_json::to_string_pretty(&plan.route_summaries())?);
            } else {
                println!(
                    "{:<32} {:<4} {:<40} {:<28} BACKENDS",
                    "FUNCTION", "RULE", "HOSTNAMES", "PATH"
                );
                for r in plan.route_summaries() {
                    let mut path = r.path.clone();
                    if let Some(m) = &r.method {
                        path = format!("{m} {path}");
                    }
                    for h in r.headers.iter().chain(&r.query) {
                        path.push_str(&format!(" [{h}]"));
                    }
                    let backends = if r.redirect {
                        "(redirect)".to_owned()
                    } else {
                        r.backends.join(",")
                    };
                    println!(
                        "{:<32} {:<4} {:<40} {:<28} {}",
                        r.function,
                        r.rule,
                        r.hostnames.join(","),
                        path,
                        backends
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(paths: &[PathBuf], gateway: String) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            for entry in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    files.push(path);
                }
            }
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    let mut texts = Vec::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        texts.push((f.display().to_string(), text));
    }
    let snapshot = snapshot_from_texts(texts.iter().map(|(f, t)| (f.as_str(), t.as_str())));
    let plan = compile(
        &snapshot,
        &CompileSettings {
            gateway,
            ..CompileSettings::default()
        },
        None,
    );
    print_diagnostics(&plan.diagnostics);
    let errors = plan.error_count();
    println!(
        "{} files, {} objects, {} HTTP functions, {} routes, {} event triggers, {} Dapr API apps, {} errors, {} warnings",
        files.len(),
        snapshot.objects.len(),
        plan.functions.len(),
        plan.routes.len(),
        plan.triggers.len(),
        plan.dapr.apps.len(),
        errors,
        plan.diagnostics.len() - errors
    );
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}
