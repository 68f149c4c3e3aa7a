//! The `Check` codec: decodes a `CheckRequest` without ever failing the
//! call. A message that is not valid protobuf (truncated, wrong wire types,
//! invalid UTF-8 in a `string` field) becomes [`Incoming::Undecodable`],
//! which the service answers with a `request_malformed` denial, so `Check`
//! never turns bad input into a gRPC error. Responses are
//! [`WireResponse`]s: prost's bytes of the `CheckResponse`, its dynamic
//! metadata written without building a `prost_types::Struct`.

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::pb::CheckRequest;
use super::response::WireResponse;

/// A decoded `Check` request, or why it could not be decoded.
#[derive(Debug)]
pub enum Incoming {
    Request(Box<CheckRequest>),
    /// The protobuf decoder's message (names the field, never its value).
    Undecodable(String),
}

/// `CheckResponse` out (as a [`WireResponse`]), [`Incoming`] in.
#[derive(Debug, Default, Clone, Copy)]
pub struct LenientCodec;

impl Codec for LenientCodec {
    type Encode = WireResponse;
    type Decode = Incoming;
    type Encoder = WireEncoder;
    type Decoder = LenientDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        LenientDecoder
    }
}

/// Decodes a `CheckRequest`, turning decode errors into a value.
#[derive(Debug, Default, Clone, Copy)]
pub struct LenientDecoder;

impl Decoder for LenientDecoder {
    type Item = Incoming;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        Ok(Some(match <CheckRequest as prost::Message>::decode(buf) {
            Ok(request) => Incoming::Request(Box::new(request)),
            Err(error) => Incoming::Undecodable(error.to_string()),
        }))
    }
}

/// Encodes a [`WireResponse`]: the bytes of its `CheckResponse`.
#[derive(Debug, Default, Clone, Copy)]
pub struct WireEncoder;

impl Encoder for WireEncoder {
    type Item = WireResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        buf.reserve(item.encoded_len());
        item.encode(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
