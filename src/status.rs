//! One spelling of a gRPC status code for everything a person or a script reads: the
//! canonical name grpcurl prints (`NOT_FOUND`), so the HTTP API's error bodies and the
//! CLI's `-o json` errors name a failure the same way.

use tonic::Code;

/// The gRPC code's canonical name (`NOT_FOUND`), as grpcurl prints it.
pub fn code_name(code: Code) -> String {
    let words = format!("{code:?}");
    let mut name = String::new();
    for (i, c) in words.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Ok), "OK");
    }
}
