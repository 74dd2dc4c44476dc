//! Conversion of a script's `targets()` result (Rhai values) into raw groups.

use rhai::{Dynamic, Map};

use super::json_targets::TargetList;
use crate::shard::target::{Invalid, Labels, RawGroup};

/// Turn the array a script returned into groups. Items that are neither a
/// `"host:port"` string nor a `#{targets, labels, weight}` map are reported
/// as invalid with their position; a non-array result is an error.
pub fn groups_from_dynamic(value: Dynamic) -> Result<(Vec<RawGroup>, Vec<Invalid>), String> {
    if value.is::<TargetList>() {
        return Ok(native_list(value.cast::<TargetList>()));
    }
    let type_name = value.type_name();
    let items = value
        .try_cast::<rhai::Array>()
        .ok_or_else(|| format!("a {type_name}, not an array of targets"))?;
    let mut groups = Vec::with_capacity(items.len());
    let mut invalid = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        if item.is::<TargetList>() {
            let (g, i) = native_list(item.cast::<TargetList>());
            groups.extend(g);
            invalid.extend(i);
            continue;
        }
        match group_from_item(index, item) {
            Ok(g) => groups.push(g),
            Err((value, reason)) => invalid.push(Invalid {
                group: index,
                value,
                reason,
            }),
        }
    }
    Ok((groups, invalid))
}

fn group_from_item(index: usize, item: Dynamic) -> Result<RawGroup, (String, String)> {
    if item.is_string() {
        let addr = item.into_string().unwrap_or_default();
        return Ok(RawGroup {
            index,
            targets: vec![addr],
            ..RawGroup::default()
        });
    }
    let shown = item.to_string();
    let Some(map) = item.try_cast::<Map>() else {
        return Err((
            shown,
            "not a \"host:port\" string or a #{targets, labels} map".into(),
        ));
    };
    let mut group = RawGroup {
        index,
        ..RawGroup::default()
    };
    for (key, value) in map {
        match key.as_str() {
            "targets" => group.targets = addresses(value).map_err(|r| (shown.clone(), r))?,
            "labels" => group.labels = labels(value).map_err(|r| (shown.clone(), r))?,
            "weight" => {
                let w = value
                    .as_int()
                    .ok()
                    .filter(|w| (1..=u32::MAX as i64).contains(w));
                group.weight = Some(w.ok_or_else(|| {
                    (
                        shown.clone(),
                        "weight must be a positive integer".to_string(),
                    )
                })? as u32);
            }
            other => {
                return Err((
                    shown.clone(),
                    format!("unknown key {other:?} (expected targets, labels, weight)"),
                ));
            }
        }
    }
    if group.targets.is_empty() {
        return Err((shown, "group has no targets".into()));
    }
    Ok(group)
}

fn addresses(value: Dynamic) -> Result<Vec<String>, String> {
    if value.is_string() {
        return Ok(vec![value.into_string().unwrap_or_default()]);
    }
    let list = value
        .try_cast::<rhai::Array>()
        .ok_or("targets must be an array of \"host:port\" strings")?;
    list.into_iter()
        .map(|v| {
            let shown = v.to_string();
            v.into_string()
                .map_err(|t| format!("target {shown} is a {t}, not a string"))
        })
        .collect()
}

fn labels(value: Dynamic) -> Result<Labels, String> {
    let map = value.try_cast::<Map>().ok_or("labels must be a map")?;
    map.into_iter()
        .map(|(k, v)| {
            if v.is_map() || v.is_array() || v.is_unit() {
                Err(format!("label {k:?} must be a string, number or bool"))
            } else {
                Ok((k.to_string(), v.to_string()))
            }
        })
        .collect()
}

/// Unwrap a native list (no copy when the script kept no other handle).
fn native_list(list: TargetList) -> (Vec<RawGroup>, Vec<Invalid>) {
    let groups = std::sync::Arc::try_unwrap(list.groups).unwrap_or_else(|shared| (*shared).clone());
    let invalid =
        std::sync::Arc::try_unwrap(list.invalid).unwrap_or_else(|shared| (*shared).clone());
    (groups, invalid)
}
