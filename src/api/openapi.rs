//! The OpenAPI document: the paths come from the handlers' `#[utoipa::path]`; the role each
//! needs comes from the same table the doors enforce ([`super::access`]), so neither drifts.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, path::Operation};

use super::auth::{Access, access};
use axum::http::Method;

/// Completes the collected document: title, the bearer scheme, and each operation's role.
pub fn document(mut doc: OpenApi) -> OpenApi {
    doc.info.title = "orchardd".into();
    doc.info.description = Some(
        "Smart-orchard telemetry: readings, daily indices, alerts, harvest lots. Tokens go in \
         `Authorization: Bearer ...`; with no tokens configured the API is open on loopback."
            .into(),
    );
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                mark(op, access(&method, path));
            }
        }
    }
    doc
}

fn mark(op: &mut Operation, needed: Access) {
    let line = match needed {
        Access::Public => {
            op.security = Some(vec![SecurityRequirement::default()]);
            "Role: none (public).".to_owned()
        }
        Access::Needs(role) => {
            op.security = Some(vec![SecurityRequirement::new(
                "bearer",
                Vec::<String>::new(),
            )]);
            format!("Role: {} (or admin).", role.as_str())
        }
    };
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{line}"),
        _ => line,
    });
}
