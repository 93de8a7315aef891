//! A small curl-like client that authenticates with Cognito's client_credentials grant.
//!
//! ```text
//! export COGNITO_DOMAIN=my-pool COGNITO_REGION=us-east-1   # or COGNITO_TOKEN_URL=https://…/oauth2/token
//! export COGNITO_CLIENT_ID=…  COGNITO_CLIENT_SECRET=…            # COGNITO_SCOPES="wallets/read" is optional
//! cargo run --example call -- GET https://api.example.com/v1/wallets
//! cargo run --example call -- POST https://api.example.com/v1/payments -d '{"amount": 100}'
//! ```
//!
//! It prints the status line and the body. The secret is never printed. It also works against
//! the loopback endpoint and API of the `testing` module (set `COGNITO_TOKEN_URL` to an
//! `http://127.0.0.1:…` URL); the crate's test `tests/call_example.rs` does exactly that.

use std::error::Error;
use std::fmt;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::CognitoAuthLayer;

const USAGE: &str = "\
Usage: cargo run --example call -- METHOD URL [-d BODY]

Environment:
  COGNITO_TOKEN_URL       the token endpoint, e.g. https://auth.example.com/oauth2/token
  COGNITO_DOMAIN          or: the Cognito domain prefix, with
  COGNITO_REGION              its AWS region, e.g. us-east-1
  COGNITO_CLIENT_ID       the app client id (required)
  COGNITO_CLIENT_SECRET   the app client secret (required)
  COGNITO_SCOPES          scopes to request, separated by spaces or commas (optional)";

/// What went wrong, in words for a person; never the secret.
#[derive(Debug)]
pub enum CallError {
    /// The command line is wrong.
    Usage(String),
    /// Environment variables are missing.
    MissingEnv(Vec<&'static str>),
    /// The request failed.
    Failed(Box<dyn Error + Send + Sync>),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Usage(why) => write!(f, "{why}\n\n{USAGE}"),
            CallError::MissingEnv(names) => write!(
                f,
                "missing environment variables: {}\n\n{USAGE}",
                names.join(", ")
            ),
            CallError::Failed(error) => {
                write!(f, "request failed: {error}")?;
                let mut source = error.source();
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
        }
    }
}

impl Error for CallError {}

/// The status line and body of the answer.
#[derive(Debug)]
pub struct CallOutput {
    /// e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// The body, as received.
    pub body: Bytes,
}

/// Runs one call: `args` as on the command line (without the program name), `env` looks up
/// environment variables.
pub async fn run(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<CallOutput, CallError> {
    let (method, url, body) = parse_args(args)?;

    let get = |name: &'static str, missing: &mut Vec<&'static str>| {
        let value = env(name).filter(|v| !v.is_empty());
        if value.is_none() {
            missing.push(name);
        }
        value
    };
    let mut missing = Vec::new();
    let client_id = get("COGNITO_CLIENT_ID", &mut missing);
    let client_secret = get("COGNITO_CLIENT_SECRET", &mut missing);
    let mut builder = CognitoAuthLayer::builder();
    match env("COGNITO_TOKEN_URL").filter(|v| !v.is_empty()) {
        Some(url) => builder = builder.token_url(url),
        None => {
            let mut also = Vec::new();
            let domain = get("COGNITO_DOMAIN", &mut also);
            let region = get("COGNITO_REGION", &mut also);
            match (domain, region) {
                (Some(domain), Some(region)) => builder = builder.cognito_domain(domain, region),
                _ => missing.push("COGNITO_TOKEN_URL (or COGNITO_DOMAIN and COGNITO_REGION)"),
            }
        }
    }
    let (Some(client_id), Some(client_secret)) = (client_id, client_secret) else {
        return Err(CallError::MissingEnv(missing));
    };
    if !missing.is_empty() {
        return Err(CallError::MissingEnv(missing));
    }
    builder = builder.client_id(client_id).client_secret(client_secret);
    for scope in env("COGNITO_SCOPES")
        .unwrap_or_default()
        .split([' ', ','])
        .filter(|s| !s.is_empty())
    {
        builder = builder.scope(scope);
    }
    let auth = builder.build().map_err(|e| CallError::Failed(e.into()))?;

    // rustls 0.23.48 deprecates ring's provider (it has no post-quantum key exchange) and
    // offers no other constructor for it; the crate keeps ring, which needs no cmake or nasm.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .map_err(|e| CallError::Failed(e.into()))?
        .https_or_http()
        .enable_http1()
        .build();
    let http = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let client = ServiceBuilder::new().layer(auth).service(http);

    let mut request = Request::builder().method(method).uri(url);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
        .map_err(|e| CallError::Failed(e.into()))?;
    let response = client.oneshot(request).await.map_err(CallError::Failed)?;
    let status_line = format!("{:?} {}", response.version(), response.status());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| CallError::Failed(e.into()))?
        .to_bytes();
    Ok(CallOutput { status_line, body })
}

fn parse_args(args: &[String]) -> Result<(Method, String, Option<String>), CallError> {
    let mut positional = Vec::new();
    let mut body = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err(CallError::Usage(String::from("help"))),
            "-d" | "--data" => match args.next() {
                Some(data) => body = Some(data.clone()),
                None => return Err(CallError::Usage("-d needs a body".into())),
            },
            _ => positional.push(arg.clone()),
        }
    }
    let [method, url] = positional.as_slice() else {
        return Err(CallError::Usage("expected METHOD and URL".into()));
    };
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| CallError::Usage(format!("`{method}` is not an HTTP method")))?;
    Ok((method, url.clone(), body))
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args, |name| std::env::var(name).ok()).await {
        Ok(output) => {
            println!("{}", output.status_line);
            println!("{}", String::from_utf8_lossy(&output.body));
        }
        Err(CallError::Usage(why)) if why == "help" => println!("{USAGE}"),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    }
}
