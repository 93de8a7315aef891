//! [`ResponseFuture`], the future [`CognitoAuth`](crate::CognitoAuth) returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::cache::{Entry, Generation, Lookup, TokenCache, TokenWait};
use crate::error::BoxError;
use crate::reject::{is_token_rejected, may_reject, replay_with};
use crate::replay::{Kept, ReplayBody};

/// The cache as a service and its response futures hold it: a reference count of the
/// service's own (made by [`Layer::layer`](tower::Layer::layer), shared by the service's
/// clones), so that the requests of services on other cores do not write one count. A
/// response future holds it so that a rejection can drop its token, and a request whose
/// service was dropped after the call (`oneshot`) is still replayed.
pub(crate) type CacheHandle = Arc<TokenCache>;

/// A request waiting for its token, with the service made ready for it.
pub(crate) struct Pending<S, B> {
    service: S,
    request: Request<B>,
    replay: Option<Kept>,
}

/// What a replay needs: a clone of the inner service, and the request as it came (no
/// `Authorization` yet).
pub(crate) struct Resend<S> {
    pub(crate) service: S,
    pub(crate) kept: Kept,
}

pin_project! {
    /// The response future of [`CognitoAuth`](crate::CognitoAuth).
    ///
    /// With a fresh token it is the inner service's future plus a check of the response, and
    /// the service's handle to the cache; it allocates nothing of its own. See the
    /// [crate docs](crate) for what it does.
    ///
    /// # Panics
    ///
    /// When polled again after it completed, as tower's futures do.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        // The inner service was called with our token: watch for a rejection.
        Called {
            #[pin]
            future: S::Future,
            cache: CacheHandle,
            generation: Generation,
            // The request was a `POST`: its answer may be a gRPC call's (see `reject`).
            post: bool,
            replay: Option<Resend<S>>,
        },
        // The inner future whose answer goes back as it is: a request that carried its own
        // `Authorization`.
        Final {
            #[pin]
            future: S::Future,
        },
        // Every state off the hot path, in one box (one allocation, made only where a request
        // waits for a token, is rejected, or fails): the poll and the drop of a future on the
        // hot path then tell three variants apart, not six.
        Aside {
            aside: Box<Aside<S, B>>,
        },
    }
}

/// The states of a [`ResponseFuture`] off the hot path.
// Always in a box of its own: boxing the large variants again would make a wait two
// allocations.
#[allow(clippy::large_enum_variant)]
enum Aside<S, B>
where
    S: Service<Request<B>>,
{
    /// No usable token yet. `pending.service` is the inner service that was made ready for
    /// this request (its reserved capacity is held while waiting, at most the refresh
    /// deadline).
    WaitToken {
        wait: TokenWait,
        cache: Option<CacheHandle>,
        pending: Option<Pending<S, B>>,
    },
    /// The token was rejected: waiting for a new one to replay with. The rejection goes back
    /// to the caller if no replay can be made.
    WaitReplayToken {
        wait: TokenWait,
        cache: CacheHandle,
        rejected: Generation,
        post: bool,
        kept: Option<(S::Response, Resend<S>)>,
    },
    /// Making the stored service clone ready for the replay.
    Readying {
        service: Option<S>,
        request: Option<Request<B>>,
        cache: CacheHandle,
        post: bool,
    },
    /// The replay was sent: its answer goes back as it is, a rejection counted.
    Replayed {
        future: Pin<Box<S::Future>>,
        cache: CacheHandle,
        post: bool,
    },
    /// No token could be had, or the body failed before the inner service was called.
    Failed { error: Option<BoxError> },
}

impl<S, B> State<S, B>
where
    S: Service<Request<B>>,
{
    fn aside(aside: Aside<S, B>) -> Self {
        State::Aside {
            aside: Box::new(aside),
        }
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    /// `post`: whether the request was a `POST` (see `reject`).
    pub(crate) fn called(
        future: S::Future,
        cache: CacheHandle,
        generation: Generation,
        post: bool,
        replay: Option<Resend<S>>,
    ) -> Self {
        Self {
            state: State::Called {
                future,
                cache,
                generation,
                post,
                replay,
            },
        }
    }

    pub(crate) fn wait_token(
        wait: TokenWait,
        cache: CacheHandle,
        service: S,
        request: Request<B>,
        replay: Option<Kept>,
    ) -> Self {
        Self {
            state: State::aside(Aside::WaitToken {
                wait,
                cache: Some(cache),
                pending: Some(Pending {
                    service,
                    request,
                    replay,
                }),
            }),
        }
    }

    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self {
            state: State::Final { future },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            state: State::aside(Aside::Failed { error: Some(error) }),
        }
    }
}

/// The token's header value and generation, as the service needs them.
pub(crate) fn header_and_generation(entry: &Entry) -> (HeaderValue, Generation) {
    (entry.header.clone(), entry.generation())
}

fn replay_request<B: ReplayBody>(kept: Kept, header: HeaderValue) -> Request<B> {
    let mut request = kept.into_request();
    request.headers_mut().insert(AUTHORIZATION, header);
    request
}

const POLLED_AFTER_DONE: &str = "`ResponseFuture` polled after it completed";

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    type Output = Result<Response<ResBody>, BoxError>;

    /// The inner future's answer is handed back from here, inlined into the caller, when two
    /// of its fields tell that it keeps its token (see `reject::may_reject`): not a 401, and not
    /// the answer with headers to a `POST`. Those (every real gRPC answer among them) are
    /// checked out of line, as are a rejection, the waits and the replay.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        if let StateProj::Called { future, post, .. } = state.as_mut().project() {
            let post = *post;
            let poll = future.poll(cx).map_err(Into::into);
            // An answer told to keep its token from two of its fields goes back as it came,
            // with no copy of it made here; the others are looked at out of line.
            if !matches!(&poll, Poll::Ready(Ok(response)) if may_reject(response, post)) {
                return poll;
            }
            let Poll::Ready(Ok(response)) = poll else {
                unreachable!("matched above");
            };
            return answered(state, response, post, cx);
        }
        poll_states(state, cx)
    }
}

/// The answer of a `Called` future that may reject its token (a 401, or an answer with headers
/// to a `POST`): handed back, or the rejection is handled and the states polled on.
#[inline(never)]
fn answered<S, B, ResBody>(
    mut state: Pin<&mut State<S, B>>,
    response: Response<ResBody>,
    post: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResBody>, BoxError>>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    match checked(state.as_mut(), response, post) {
        Some(response) => Poll::Ready(Ok(response)),
        None => poll_states(state, cx),
    }
}

/// The answer of a `Called` future, checked: `Some` to hand back (it keeps its token, or no
/// replay can do better), `None` when the state moved on to a replay.
#[inline]
fn checked<S, B, ResBody>(
    state: Pin<&mut State<S, B>>,
    response: Response<ResBody>,
    post: bool,
) -> Option<Response<ResBody>>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: ReplayBody,
{
    if !is_token_rejected(&response, post) {
        return Some(response);
    }
    rejected(state, response)
}

/// The inner service of a `Called` future rejected its token: drops that token, and moves on
/// to the replay; or gives the rejection back when no replay can be made.
#[cold]
#[inline(never)]
fn rejected<S, B, ResBody>(
    mut state: Pin<&mut State<S, B>>,
    response: Response<ResBody>,
) -> Option<Response<ResBody>>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: ReplayBody,
{
    let StateProj::Called {
        cache,
        generation,
        post,
        replay,
        ..
    } = state.as_mut().project()
    else {
        return Some(response);
    };
    let rejected = *generation;
    let post = *post;
    cache.invalidate(rejected);
    let Some(replay) = replay.take() else {
        // Not replayable (a large or streaming body, or replay is off): the rejection goes
        // back, and the next request gets a fresh token.
        cache.count_rejection_returned();
        return Some(response);
    };
    match cache.lookup(header_and_generation) {
        Lookup::Ready((header, generation)) if replay_with(generation, rejected) => {
            cache.count_replay();
            let request = replay_request::<B>(replay.kept, header);
            let cache = Arc::clone(cache);
            state.set(State::aside(Aside::Readying {
                service: Some(replay.service),
                request: Some(request),
                cache,
                post,
            }));
            None
        }
        // The same token again (rejections are throttled) or none: a replay cannot do better
        // than the answer we have.
        Lookup::Ready(_) | Lookup::Failed(_) => {
            cache.count_rejection_returned();
            Some(response)
        }
        Lookup::Wait(wait) => {
            let cache = Arc::clone(cache);
            state.set(State::aside(Aside::WaitReplayToken {
                wait,
                cache,
                rejected,
                post,
                kept: Some((response, replay)),
            }));
            None
        }
    }
}

/// Every state, in a loop until one is pending or done.
#[inline(never)]
fn poll_states<S, B, ResBody>(
    mut state: Pin<&mut State<S, B>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResBody>, BoxError>>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    loop {
        match state.as_mut().project() {
            StateProj::Called { future, post, .. } => {
                let post = *post;
                let response = ready!(future.poll(cx)).map_err(Into::into)?;
                if let Some(response) = checked(state.as_mut(), response, post) {
                    return Poll::Ready(Ok(response));
                }
            }
            StateProj::Final { future } => {
                return future.poll(cx).map_err(Into::into);
            }
            StateProj::Aside { aside } => match &mut **aside {
                Aside::WaitToken {
                    wait,
                    cache,
                    pending,
                } => {
                    let entry = match ready!(wait.as_mut().poll(cx)) {
                        Ok(entry) => entry,
                        Err(error) => return Poll::Ready(Err(error.into())),
                    };
                    let Some(Pending {
                        mut service,
                        mut request,
                        replay,
                    }) = pending.take()
                    else {
                        panic!("{POLLED_AFTER_DONE}");
                    };
                    let (header, generation) = header_and_generation(&entry);
                    request.headers_mut().insert(AUTHORIZATION, header);
                    let post = request.method() == Method::POST;
                    // `service` was made ready by the caller before `call`, and moved here.
                    let future = service.call(request);
                    let replay = replay.map(|kept| Resend { service, kept });
                    let Some(cache) = cache.take() else {
                        panic!("{POLLED_AFTER_DONE}");
                    };
                    state.set(State::Called {
                        future,
                        cache,
                        generation,
                        post,
                        replay,
                    });
                }
                Aside::WaitReplayToken {
                    wait,
                    cache,
                    rejected,
                    post,
                    kept,
                } => {
                    let outcome = ready!(wait.as_mut().poll(cx));
                    let Some((response, replay)) = kept.take() else {
                        panic!("{POLLED_AFTER_DONE}");
                    };
                    match outcome {
                        Ok(entry) if replay_with(entry.generation(), *rejected) => {
                            cache.count_replay();
                            let (header, _) = header_and_generation(&entry);
                            drop(response);
                            let request = replay_request::<B>(replay.kept, header);
                            // (The box is used again.)
                            let (cache, post) = (Arc::clone(cache), *post);
                            **aside = Aside::Readying {
                                service: Some(replay.service),
                                request: Some(request),
                                cache,
                                post,
                            };
                        }
                        _ => {
                            cache.count_rejection_returned();
                            return Poll::Ready(Ok(response));
                        }
                    }
                }
                Aside::Readying {
                    service,
                    request,
                    cache,
                    post,
                } => {
                    let Some(svc) = service.as_mut() else {
                        panic!("{POLLED_AFTER_DONE}");
                    };
                    ready!(svc.poll_ready(cx)).map_err(Into::into)?;
                    let (Some(mut svc), Some(request)) = (service.take(), request.take()) else {
                        panic!("{POLLED_AFTER_DONE}");
                    };
                    // Boxed once more (the replay path allocates anyway), so that its answer can
                    // be looked at from this box rather than from a state of the hot path.
                    let future = Box::pin(svc.call(request));
                    let (cache, post) = (Arc::clone(cache), *post);
                    **aside = Aside::Replayed {
                        future,
                        cache,
                        post,
                    };
                }
                Aside::Replayed {
                    future,
                    cache,
                    post,
                } => {
                    let response = ready!(future.as_mut().poll(cx)).map_err(Into::into)?;
                    if is_token_rejected(&response, *post) {
                        cache.count_rejection_returned();
                    }
                    return Poll::Ready(Ok(response));
                }
                Aside::Failed { error } => {
                    let Some(error) = error.take() else {
                        panic!("{POLLED_AFTER_DONE}");
                    };
                    return Poll::Ready(Err(error));
                }
            },
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}
