//! Structured output: the answer checked against the request's JSON Schema.

/// The answer of a structured-output run, checked against its schema: the JSON text (a single
/// ```json fence around it is removed), or why it does not match.
pub(crate) fn check_structured(output: &str, schema: &serde_json::Value) -> Result<String, String> {
    let mut text = output.trim();
    if let Some(inner) = text.strip_prefix("```") {
        let inner = inner.strip_prefix("json").unwrap_or(inner);
        if let Some(body) = inner.trim_end().strip_suffix("```") {
            text = body.trim();
        }
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!("the answer is not JSON ({e}), but the request asked for structured output")
    })?;
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| format!("the output schema is not a valid JSON Schema: {e}"))?;
    if let Err(e) = validator.validate(&value) {
        let at = e.instance_path().to_string();
        return Err(format!(
            "the answer does not match the output schema: {e}{}",
            if at.is_empty() {
                String::new()
            } else {
                format!(" (at {at})")
            }
        ));
    }
    Ok(text.to_string())
}
