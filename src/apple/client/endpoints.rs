//! The endpoints the client calls, one method each: Client Config, Event Status, the writes
//! (`submit`), and the paginated reads, collected ([`Traversal`]) or streamed into a
//! [`PageSink`]. Each builds its request and leaves the sending to `send.rs`.

use super::*;

impl AppleClient {
    pub async fn client_config(&self, token: &str) -> Result<ClientConfigResponse, ApiError> {
        let url = self.url("clientConfig", "client/config");
        self.json(token, "client/config", Method::GET, url, None)
            .await
    }

    pub async fn set_client_config(
        &self,
        token: &str,
        req: &ClientConfigRequest,
    ) -> Result<ClientConfigResponse, ApiError> {
        let url = self.url("clientConfig", "client/config");
        let body = serde_json::to_vec(req).map_err(|e| ApiError::Decode {
            endpoint: "client/config".into(),
            detail: format!("encoding the request: {e}"),
        })?;
        self.json(token, "client/config", Method::POST, url, Some(body))
            .await
    }

    /// `GET status?eventId=…` (Apple's documented form; the id is a query parameter).
    pub async fn event_status(
        &self,
        token: &str,
        event_id: &str,
    ) -> Result<StatusResponse, ApiError> {
        let mut url = self.url("eventStatus", "status");
        url.query_pairs_mut().append_pair("eventId", event_id);
        self.json(token, "status", Method::GET, url, None).await
    }

    /// Submits a write. `body` is sent as given (split it with `split_request` first).
    pub async fn submit(
        &self,
        token: &str,
        kind: RequestKind,
        body: &serde_json::Value,
    ) -> Result<EventResponse, ApiError> {
        let url = self.url(kind.url_key(), kind.default_path());
        let body = serde_json::to_vec(body).map_err(|e| ApiError::Decode {
            endpoint: kind.default_path().into(),
            detail: format!("encoding the request: {e}"),
        })?;
        self.json(token, kind.default_path(), Method::POST, url, Some(body))
            .await
    }

    pub async fn get_assets(&self, token: &str) -> Result<Traversal<ResponseAsset>, ApiError> {
        let base = self.url("getAssets", "assets");
        self.traverse::<GetAssetsResponse, ResponseAsset>(token, "assets", base, None)
            .await
    }

    pub async fn get_assignments(
        &self,
        token: &str,
        since_version: Option<&str>,
    ) -> Result<Traversal<Assignment>, ApiError> {
        let base = self.url("getAssignments", "assignments");
        self.traverse::<GetAssignmentsResponse, Assignment>(
            token,
            "assignments",
            base,
            since_version,
        )
        .await
    }

    pub async fn get_users(
        &self,
        token: &str,
        since_version: Option<&str>,
    ) -> Result<Traversal<ResponseUser>, ApiError> {
        let base = self.url("getUsers", "users");
        self.traverse::<GetUsersResponse, ResponseUser>(token, "users", base, since_version)
            .await
    }

    /// Streams Get Assets into `sink` (see [`traverse_into`]).
    pub async fn stream_assets<S: PageSink<ResponseAsset>>(
        &self,
        token: &str,
        sink: &mut S,
    ) -> Result<Streamed, StreamError<S::Error>> {
        let base = self.url("getAssets", "assets");
        self.traverse_into::<GetAssetsResponse, ResponseAsset, S>(token, "assets", base, None, sink)
            .await
    }

    /// Streams Get Assignments into `sink` (see [`traverse_into`]).
    pub async fn stream_assignments<S: PageSink<Assignment>>(
        &self,
        token: &str,
        since_version: Option<&str>,
        sink: &mut S,
    ) -> Result<Streamed, StreamError<S::Error>> {
        let base = self.url("getAssignments", "assignments");
        self.traverse_into::<GetAssignmentsResponse, Assignment, S>(
            token,
            "assignments",
            base,
            since_version,
            sink,
        )
        .await
    }

    /// Streams Get Users into `sink` (see [`traverse_into`]).
    pub async fn stream_users<S: PageSink<ResponseUser>>(
        &self,
        token: &str,
        since_version: Option<&str>,
        sink: &mut S,
    ) -> Result<Streamed, StreamError<S::Error>> {
        let base = self.url("getUsers", "users");
        self.traverse_into::<GetUsersResponse, ResponseUser, S>(
            token,
            "users",
            base,
            since_version,
            sink,
        )
        .await
    }

    async fn traverse<R, T>(
        &self,
        token: &str,
        endpoint: &'static str,
        base: Url,
        since_version: Option<&str>,
    ) -> Result<Traversal<T>, ApiError>
    where
        R: DeserializeOwned + Into<Page<T>>,
        T: crate::apple::pagination::Record + Send,
    {
        let fetch = |page: u32| {
            let url = page_url(&base, page, since_version);
            async move {
                let r: R = self.json(token, endpoint, Method::GET, url, None).await?;
                Ok(self.redact_page(token, r.into()))
            }
        };
        traverse(
            fetch,
            self.inner.opts.max_concurrent_requests,
            since_version.is_some(),
        )
        .await
    }

    async fn traverse_into<R, T, S>(
        &self,
        token: &str,
        endpoint: &'static str,
        base: Url,
        since_version: Option<&str>,
        sink: &mut S,
    ) -> Result<Streamed, StreamError<S::Error>>
    where
        R: DeserializeOwned + Into<Page<T>>,
        T: crate::apple::pagination::Record,
        S: PageSink<T>,
    {
        let fetch = |page: u32| {
            let url = page_url(&base, page, since_version);
            async move {
                let r: R = self.json(token, endpoint, Method::GET, url, None).await?;
                Ok(self.redact_page(token, r.into()))
            }
        };
        traverse_into(
            fetch,
            self.inner.opts.max_concurrent_requests,
            since_version.is_some(),
            sink,
        )
        .await
    }

    fn redact_page<T>(&self, token: &str, page: Page<T>) -> Page<T> {
        if page.undecodable_samples.is_empty() {
            return page;
        }
        match self.slot(token) {
            Ok(slot) => page.redact(lock(&slot.state).stoken.expose()),
            Err(_) => page,
        }
    }
}

/// One page of a paginated read: `pageIndex`, and `sinceVersionId` for an incremental one.
fn page_url(base: &Url, page: u32, since_version: Option<&str>) -> Url {
    let mut url = base.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("pageIndex", &page.to_string());
        if let Some(v) = since_version {
            q.append_pair("sinceVersionId", v);
        }
    }
    url
}
