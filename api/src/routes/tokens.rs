//! `/api/v1/tokens`: the tenant's API tokens, for admins.

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use super::caller::Caller;
use super::{ApiTags, NoContent};
use crate::auth::{create_token, revoke_token, token_is_live};
use crate::db::entities::api_tokens;
use crate::error::ApiError;
use crate::model::{TokenCreate, TokenCreated, TokenInfo};

/// Token management.
pub struct TokensApi;

/// The tenant's tokens.
#[derive(ApiResponse)]
enum TokenList {
    /// Every token of the tenant, newest first, without secrets.
    #[oai(status = 200)]
    Ok(Json<Vec<TokenInfo>>),
}

/// A created token.
#[derive(ApiResponse)]
enum TokenIssued {
    /// The token was created; its secret is in the body and nowhere else.
    #[oai(status = 201)]
    Created(Json<TokenCreated>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Tokens")]
impl TokensApi {
    /// List tokens
    ///
    /// Every token of the caller's tenant, revoked ones included, newest first. Not cached.
    #[oai(path = "/tokens", method = "get", operation_id = "listTokens")]
    async fn list(&self, caller: Caller) -> Result<TokenList, ApiError> {
        let state = caller.admin()?;
        let rows = state
            .db
            .timed(
                "token_list",
                api_tokens::Entity::find()
                    .filter(api_tokens::Column::TenantId.eq(caller.tenant()))
                    .order_by_desc(api_tokens::Column::CreatedAt)
                    .all(&state.db.conn),
            )
            .await?;
        Ok(TokenList::Ok(Json(rows.into_iter().map(TokenInfo::try_from).collect::<Result<_, _>>()?)))
    }

    /// Create a token
    #[oai(path = "/tokens", method = "post", operation_id = "createToken")]
    async fn create(&self, caller: Caller, body: Json<TokenCreate>) -> Result<TokenIssued, ApiError> {
        let state = caller.admin()?;
        // The collection has a representation (`GET /tokens`), without a tag.
        caller.conditions().check_untagged(true)?;
        let body = body.0;
        caller.begin_commit();
        let (id, token) = state
            .db
            .timed("token_insert", create_token(&state.db.conn, caller.tenant(), body.role, &body.name.0))
            .await
            .map_err(ApiError::from_commit)?;
        Ok(TokenIssued::Created(Json(TokenCreated { id, token, role: body.role, name: body.name.into() })))
    }

    /// Revoke a token
    ///
    /// Takes effect at once in every API process (within the token-cache period in one that
    /// cannot hear announcements from the database).
    #[oai(path = "/tokens/:id", method = "delete", operation_id = "revokeToken")]
    async fn revoke(
        &self,
        caller: Caller,
        /// Token id.
        id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        let state = caller.admin()?;
        // A token has no entity tag: a condition that refuses a live one is answered before the
        // revocation (one that is not live is a 404 either way, preconditions or not).
        let conditions = caller.conditions();
        if !conditions.is_empty() {
            let live = token_is_live(&state.db.conn, id.0, caller.tenant());
            if state.db.timed("token_find", live).await? {
                conditions.check_untagged(true)?;
            }
        }
        caller.begin_commit();
        let revoked = state
            .db
            .timed("token_revoke", revoke_token(&state.db.conn, id.0, Some(caller.tenant())))
            .await
            .map_err(ApiError::from_commit)?;
        let hash = revoked.ok_or_else(|| ApiError::not_found("token", id.0))?;
        state.tokens.forget(&hash);
        Ok(NoContent::Done)
    }
}
