//! The EKS bearer token, as `aws eks get-token` makes it: a SigV4-presigned
//! `sts:GetCallerIdentity` URL whose signed headers include `x-k8s-aws-id: <cluster>`,
//! valid 60 seconds for the presign and 15 minutes for EKS, encoded as
//! `k8s-aws-v1.` + base64url (no padding) of the URL.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine;

use crate::error::{Error, Result};

/// The prefix of every EKS token.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";

/// AWS credentials (in Lambda: the function role's, from the environment).
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl AwsCredentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    pub fn from_env() -> std::result::Result<AwsCredentials, String> {
        let get = |v: &str| std::env::var(v).ok().filter(|x| !x.is_empty());
        match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(AwsCredentials {
                access_key_id,
                secret_access_key,
                session_token: get("AWS_SESSION_TOKEN"),
            }),
            _ => Err("EKS access needs AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set".into()),
        }
    }
}

/// The presigned `GetCallerIdentity` URL for `cluster`.
pub fn presigned_url(
    cluster: &str,
    region: &str,
    creds: &AwsCredentials,
    time: SystemTime,
) -> Result<String> {
    let host = format!("sts.{region}.amazonaws.com");
    let url = format!("https://{host}/?Action=GetCallerIdentity&Version=2011-06-15");
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "baton",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(60));
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| Error::permanent("EKS token", e))?
        .into();
    let headers = [("host", host.as_str()), ("x-k8s-aws-id", cluster)];
    let request = SignableRequest::new(
        "GET",
        url.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| Error::permanent("EKS token", e))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| Error::permanent("EKS token", e))?
        .into_parts();
    let mut out = url;
    for (name, value) in instructions.params() {
        out.push('&');
        out.push_str(name);
        out.push('=');
        out.push_str(
            &form_urlencoded::byte_serialize(value.as_bytes())
                .collect::<String>()
                .replace('+', "%20"),
        );
    }
    Ok(out)
}

/// The bearer token for `cluster`.
pub fn token(
    cluster: &str,
    region: &str,
    creds: &AwsCredentials,
    time: SystemTime,
) -> Result<String> {
    let url = presigned_url(cluster, region, creds, time)?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
    ))
}
