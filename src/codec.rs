//! The codec the service's servers run with: prost's, except that a request
//! that does not decode is the client's mistake, answered INVALID_ARGUMENT
//! with a `BadRequest` naming the field, where tonic's codec answers
//! INTERNAL (for example metadata nested deeper than prost's recursion
//! limit of 100 messages, about 45 levels of `Struct`).

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::error::Error;

/// Protobuf messages whose fields are not part of a request's field path:
/// the `google.protobuf.Struct` family that `metadata` is made of.
const VALUE_MESSAGES: [&str; 3] = ["Struct", "Value", "ListValue"];

/// [`tonic_prost::ProstCodec`] with decode errors reported as the client's.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes `U`, mapping a decode error to [`undecodable`].
#[derive(Debug, Clone)]
pub struct RequestDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|error| undecodable(&error).into())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The INVALID_ARGUMENT for a request prost could not decode, naming the
/// request field it failed in (`events.metadata`), or `request`.
pub fn undecodable(error: &prost::DecodeError) -> Error {
    // prost keeps the (message, field) path private; its Display writes it
    // innermost first: "failed to decode Protobuf message: Struct.fields:
    // ... EventInput.metadata: AppendRequest.events: recursion limit reached".
    let text = error.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut parts: Vec<&str> = text.split(": ").collect();
    let what = parts.pop().unwrap_or_default();
    let path: Vec<&str> = parts
        .iter()
        .rev()
        .filter_map(|part| part.split_once('.'))
        .take_while(|(message, _)| !VALUE_MESSAGES.contains(message))
        .map(|(_, field)| field)
        .collect();
    let field = if path.is_empty() {
        "request".to_owned()
    } else {
        path.join(".")
    };
    let description = if what == "recursion limit reached" {
        "is nested too deeply to decode (protobuf allows 100 levels of messages; a Struct level takes two)"
            .to_owned()
    } else {
        format!("is not valid protobuf: {what}")
    };
    Error::invalid(field, description)
}

#[cfg(test)]
mod tests {
    use prost_types::value::Kind;
    use prost_types::{Struct, Value};

    use super::*;
    use crate::error::FieldViolation;
    use crate::proto::{AppendRequest, EventInput};

    fn nested(levels: usize) -> Struct {
        let mut inner = Struct::default();
        for _ in 0..levels {
            inner = Struct {
                fields: [(
                    "k".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(inner)),
                    },
                )]
                .into(),
            };
        }
        inner
    }

    #[test]
    fn metadata_nested_past_the_recursion_limit_names_the_metadata_field() {
        let request = AppendRequest {
            events: vec![EventInput {
                metadata: Some(nested(60)),
                ..Default::default()
            }],
        };
        let error = AppendRequest::decode(request.encode_to_vec().as_slice()).expect_err("decodes");
        match undecodable(&error) {
            Error::InvalidArgument(violations) => {
                assert_eq!(violations.len(), 1);
                assert_eq!(violations[0].field, "events.metadata");
                assert!(violations[0].description.contains("nested too deeply"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_names_the_request() {
        let error = AppendRequest::decode([0xff_u8, 0xff, 0xff].as_slice()).expect_err("decodes");
        let Error::InvalidArgument(violations) = undecodable(&error) else {
            panic!("not invalid argument");
        };
        assert_eq!(
            violations,
            [FieldViolation::new("request", violations[0].description.clone())]
        );
        assert!(violations[0].description.starts_with("is not valid protobuf"));
    }
}
