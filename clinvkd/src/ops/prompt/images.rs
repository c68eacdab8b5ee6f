//! A prompt's images: checked and decoded once.

use super::*;
use crate::error::Code;

/// At most this many images per prompt.
pub(crate) const MAX_IMAGES: usize = 8;
/// At most this many bytes per image (decoded).
pub(crate) const MAX_IMAGE_BYTES: usize = 10 * 1024 * 1024;

/// The image types the CLIs take, with the first bytes of each.
pub(super) fn image_kind_matches(media_type: &str, bytes: &[u8]) -> Option<bool> {
    Some(match media_type {
        "image/png" => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a"),
        "image/webp" => bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP",
        _ => return None,
    })
}

pub(super) fn too_many_images() -> ApiError {
    bad(
        Code::TooManyImages,
        format!("at most {MAX_IMAGES} images per prompt"),
    )
    .with_param("images")
}

/// Checks and decodes a native request's images: how many, and each one (see `decode_image`).
pub(crate) fn decode_images(images: Vec<api::ImageInput>) -> Result<Vec<Image>, ApiError> {
    if images.len() > MAX_IMAGES {
        return Err(too_many_images());
    }
    images
        .into_iter()
        .enumerate()
        .map(|(i, img)| decode_image(img, &format!("images[{i}]")))
        .collect()
}

/// Checks and decodes one image — its type, base64, size, and that the bytes are what the type
/// says — naming it `param` in the error. The only place an image is decoded.
pub(crate) fn decode_image(img: api::ImageInput, param: &str) -> Result<Image, ApiError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(img.data.trim())
        .map_err(|e| {
            bad(
                Code::InvalidImage,
                format!("{param}: the data is not base64: {e}"),
            )
            .with_param(param)
        })?;
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(bad(
            Code::ImageTooLarge,
            format!(
                "{param}: {} bytes; at most {MAX_IMAGE_BYTES} per image",
                bytes.len()
            ),
        )
        .with_param(param));
    }
    match image_kind_matches(&img.media_type, &bytes) {
        None => Err(bad(
            Code::UnsupportedImageType,
            format!(
                "{param}: media type {:?} is not supported (image/png, image/jpeg, image/gif, image/webp)",
                img.media_type
            ),
        )
        .with_param(param)),
        Some(false) => Err(bad(
            Code::InvalidImage,
            format!("{param}: the data is not a {} image", img.media_type),
        )
        .with_param(param)),
        Some(true) => Ok(Image {
            media_type: img.media_type,
            base64: img.data,
            bytes: std::sync::Arc::new(bytes),
        }),
    }
}
