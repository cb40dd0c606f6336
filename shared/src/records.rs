//! Domain records as table attributes, and back.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ApiError, ApiResult};
use crate::store::{Attrs, Item, Page};

/// A record's fields as the attributes of an item.
pub fn to_attrs<T: Serialize>(record: &T) -> ApiResult<Attrs> {
    match serde_json::to_value(record) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::Internal(
            "a record must serialise to an object".into(),
        )),
        Err(e) => Err(ApiError::Internal(format!(
            "record does not serialise: {e}"
        ))),
    }
}

/// The record an item stores.
pub fn from_item<T: DeserializeOwned>(item: Item) -> ApiResult<T> {
    serde_json::from_value(serde_json::Value::Object(item.attrs)).map_err(|e| {
        ApiError::Internal(format!(
            "stored record {}/{} is unreadable: {e}",
            item.key.pk, item.key.sk
        ))
    })
}

/// A page of items as a page of records.
pub fn page_of<T: DeserializeOwned>(page: Page<Item>) -> ApiResult<Page<T>> {
    Ok(Page {
        items: page
            .items
            .into_iter()
            .map(from_item)
            .collect::<ApiResult<_>>()?,
        next: page.next,
    })
}
