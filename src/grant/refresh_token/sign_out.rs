//! Signing out: the session ends here (no request carries its access token again, no
//! exchange starts) and its refresh token is revoked at the server.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Uri;
use tokio::time::Instant;

use super::exchange::closed;
use super::{Inner, Latest, RefreshTokenGrant, executor, lock};
use crate::error::Error;
use crate::grant::endpoint::{Endpoint, Secret};

/// How [`RefreshTokenGrant::sign_out`] revokes the session's refresh token at the server.
pub(super) enum Revocation {
    /// RFC 7009: `POST token=…&token_type_hint=refresh_token` and the client's authentication
    /// to the revocation endpoint (Cognito's `/oauth2/revoke`).
    OAuth {
        endpoint: Box<Endpoint>,
        /// The client's own form fields (its id, and its secret under `ClientAuth::Post`).
        form_tail: Secret,
    },
    /// No revocation endpoint is known: the session ends in this process only.
    None,
    // The user-pool API's `RevokeToken` (a session through Cognito's own API) belongs here,
    // beside its wire format.
}

/// The revocation endpoint beside a token endpoint: `…/oauth2/token` → `…/oauth2/revoke`, as
/// Cognito's domains and most OAuth servers lay them out; `None` for any other path.
pub(super) fn beside(token_url: &Uri) -> Option<Uri> {
    let path = token_url.path().strip_suffix("/oauth2/token")?;
    let mut parts = token_url.clone().into_parts();
    parts.path_and_query = Some(format!("{path}/oauth2/revoke").parse().ok()?);
    Uri::from_parts(parts).ok()
}

impl RefreshTokenGrant {
    /// Signs the user out: ends the session in this process and revokes its refresh token at
    /// the server (RFC 7009, at the token endpoint's `/oauth2/revoke`, or the one
    /// [`revocation_url`](super::RefreshTokenGrantBuilder::revocation_url) names), which also
    /// ends the access tokens issued from it.
    ///
    /// Waits for an exchange in flight first. Then, before the revocation is sent: no request
    /// through a layer carries the session's access token any more (its cache drops it), no
    /// exchange starts (fetches fail with an error of kind
    /// [`InvalidConfig`](crate::ErrorKind::InvalidConfig)), a token set whose save failed is
    /// forgotten, and [`status`](Self::status) says
    /// [`closed`](super::SessionStatus::closed). The application deletes what it saved.
    /// Signing out again does nothing.
    ///
    /// # Errors
    ///
    /// The session has ended here either way. An [`Error`] when the revocation failed (the
    /// server's answer or the network, as for an exchange), or of kind
    /// [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when no revocation endpoint is
    /// known (a token URL that does not end in `/oauth2/token`, without `revocation_url`):
    /// the refresh token then stays valid at the server until it expires.
    pub async fn sign_out(&self) -> Result<(), Error> {
        let mut session = self.inner.session.lock().await;
        if session.closed {
            return if self.inner.status.borrow().closed {
                Ok(())
            } else {
                Err(closed())
            };
        }
        session.closed = true;
        let refresh_token = session.refresh_token.clone();
        let ended = session.ended.is_some();
        lock(&self.inner.stored).take();
        *lock(&self.inner.latest) = Latest::default();
        // A cache that sees the new epoch drops the session's access token.
        self.inner.epoch.fetch_add(1, Ordering::Release);
        drop(session);
        *self.inner.unsaved.lock().await = None;
        self.inner.status.send_modify(|status| {
            status.closed = true;
            status.unsaved = false;
        });
        tracing::debug!("the user signed out; the session has ended here");
        if ended {
            // `invalid_grant`: the server has ended it already.
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        executor::run(async move { inner.revoke(refresh_token).await }).await?
    }
}

impl Inner {
    /// Revokes `refresh_token` at the server, on an exchange thread.
    async fn revoke(&self, refresh_token: Secret) -> Result<(), Error> {
        match &self.revocation {
            Revocation::OAuth {
                endpoint,
                form_tail,
            } => {
                let form = revocation_form(&refresh_token, form_tail);
                let timeout = endpoint.request_timeout;
                match tokio::time::timeout(
                    timeout,
                    endpoint.post(Bytes::from(form), Instant::now()),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(Error::timeout("the revocation request", timeout)),
                }
            }
            Revocation::None => Err(Error::invalid_config(
                "signed out here, but no revocation endpoint is known (the token URL does not \
                 end in /oauth2/token): call `revocation_url`",
            )),
        }
    }
}

/// `token=…&token_type_hint=refresh_token`, then the client's own fields.
fn revocation_form(refresh_token: &Secret, form_tail: &Secret) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("token", &refresh_token.0);
    form.append_pair("token_type_hint", "refresh_token");
    let mut form = form.finish();
    if !form_tail.0.is_empty() {
        form.push('&');
        form.push_str(&form_tail.0);
    }
    form
}
