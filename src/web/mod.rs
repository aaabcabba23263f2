//! The staff dashboard: HTML, script and style built into the binary from `web/`, so
//! orchardd needs no web server and no Node.js at run time. The page holds no data; it asks
//! the API for everything with the token staff sign in with.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Assets;

/// `GET /`: the dashboard.
pub async fn index() -> Response {
    serve("index.html")
}

/// `GET /assets/{file}`: its script and style.
pub async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(file: &str) -> Response {
    let Some(found) = Assets::get(file) else {
        return ApiError::not_found(format!("no dashboard file `{file}`")).into_response();
    };
    let kind = match file.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            // A new orchardd brings new assets: the browser asks again each time.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        found.data,
    )
        .into_response()
}
