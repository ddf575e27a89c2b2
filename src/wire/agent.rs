//! ssh-agent messages (draft-miller-ssh-agent), pure: the framing, the message numbers idmux
//! uses, and the two messages both sides of `agent.sock` read and write. The agent that holds
//! keys and signs lives in `idmux-transport`; doctor and the tests read answers with this.

/// SSH_AGENT_FAILURE.
pub const FAILURE: u8 = 5;
/// SSH_AGENTC_REQUEST_IDENTITIES.
pub const REQUEST_IDENTITIES: u8 = 11;
/// SSH_AGENT_IDENTITIES_ANSWER.
pub const IDENTITIES_ANSWER: u8 = 12;
/// SSH_AGENTC_SIGN_REQUEST.
pub const SIGN_REQUEST: u8 = 13;
/// SSH_AGENT_SIGN_RESPONSE.
pub const SIGN_RESPONSE: u8 = 14;
/// SSH_AGENT_RSA_SHA2_256 sign flag.
pub const RSA_SHA2_256: u32 = 2;
/// SSH_AGENT_RSA_SHA2_512 sign flag.
pub const RSA_SHA2_512: u32 = 4;
/// Largest message accepted.
pub const MAX_FRAME: usize = 256 * 1024;

/// Append an SSH `string` (u32 length, bytes).
pub fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Take an SSH `string` off the front of `b`.
pub fn get_string<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = get_u32(b)? as usize;
    if b.len() < n {
        return None;
    }
    let (s, r) = b.split_at(n);
    *b = r;
    Some(s)
}

/// Take a big-endian u32 off the front of `b`.
pub(crate) fn get_u32(b: &mut &[u8]) -> Option<u32> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    *b = rest;
    Some(u32::from_be_bytes(*head))
}

/// A message with its u32 length prefix, as it goes on the socket.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + msg.len());
    put_string(&mut out, msg);
    out
}

/// What is wrong with a request frame's length prefix.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("an agent request of 0 bytes")]
    Empty,
    #[error("an agent request of {0} bytes (at most {1} are served)")]
    TooLong(usize, usize),
}

/// The length of the request message a frame's 4-byte prefix announces, if it is served
/// (1 to `max` bytes).
pub fn request_len(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let n = u32::from_be_bytes(prefix) as usize;
    match n {
        0 => Err(FrameError::Empty),
        n if n > max => Err(FrameError::TooLong(n, max)),
        n => Ok(n),
    }
}

/// The first whole request frame of `buf`: its message and the bytes it used; `Ok(None)`
/// when more bytes are needed.
pub fn take_request(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let n = request_len(*prefix, max)?;
    Ok(rest.get(..n).map(|m| (m, 4 + n)))
}

/// One key in an identities answer: its public key (or certificate) blob and comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    pub blob: Vec<u8>,
    pub comment: Vec<u8>,
}

/// SSH_AGENT_IDENTITIES_ANSWER for `ids`.
pub fn identities_answer(ids: &[AgentIdentity]) -> Vec<u8> {
    let mut out = vec![IDENTITIES_ANSWER];
    out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for id in ids {
        put_string(&mut out, &id.blob);
        put_string(&mut out, &id.comment);
    }
    out
}

/// What is wrong with an identities answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the agent's answer is cut short")]
    Short,
    #[error("the agent answered message type {0}, not an identities answer (12)")]
    WrongType(u8),
}

/// The keys in an SSH_AGENT_IDENTITIES_ANSWER message (type byte first).
pub fn parse_identities(msg: &[u8]) -> Result<Vec<AgentIdentity>, AnswerError> {
    let (&kind, mut b) = msg.split_first().ok_or(AnswerError::Short)?;
    if kind != IDENTITIES_ANSWER {
        return Err(AnswerError::WrongType(kind));
    }
    let n = get_u32(&mut b).ok_or(AnswerError::Short)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let blob = get_string(&mut b).ok_or(AnswerError::Short)?.to_vec();
        let comment = get_string(&mut b).ok_or(AnswerError::Short)?.to_vec();
        out.push(AgentIdentity { blob, comment });
    }
    Ok(out)
}

/// An SSH_AGENTC_SIGN_REQUEST's body (after the type byte).
#[derive(Debug, PartialEq, Eq)]
pub struct SignRequest<'a> {
    pub key_blob: &'a [u8],
    pub data: &'a [u8],
    pub flags: u32,
}

impl<'a> SignRequest<'a> {
    /// Parse the body after the type byte; `None` if it is cut short.
    pub fn parse(mut body: &'a [u8]) -> Option<SignRequest<'a>> {
        let key_blob = get_string(&mut body)?;
        let data = get_string(&mut body)?;
        let flags = get_u32(&mut body)?;
        Some(SignRequest {
            key_blob,
            data,
            flags,
        })
    }
}

/// SSH_AGENT_SIGN_RESPONSE carrying an encoded signature.
pub fn sign_response(signature: &[u8]) -> Vec<u8> {
    let mut out = vec![SIGN_RESPONSE];
    put_string(&mut out, signature);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_answer_bytes() {
        // Written from the draft: byte 12, uint32 nkeys, then string blob, string comment.
        let m = identities_answer(&[AgentIdentity {
            blob: b"kb".to_vec(),
            comment: b"c".to_vec(),
        }]);
        assert_eq!(
            m,
            [12, 0, 0, 0, 1, 0, 0, 0, 2, b'k', b'b', 0, 0, 0, 1, b'c']
        );
        assert_eq!(parse_identities(&m).unwrap()[0].blob, b"kb");
        assert_eq!(parse_identities(&[12, 0, 0, 0, 0]).unwrap(), vec![]);
        assert_eq!(parse_identities(&[12, 0, 0, 0, 1]), Err(AnswerError::Short));
        assert_eq!(parse_identities(&[5]), Err(AnswerError::WrongType(5)));
        assert_eq!(parse_identities(&[]), Err(AnswerError::Short));
    }

    #[test]
    fn sign_request_bytes() {
        let raw = [13, 0, 0, 0, 1, b'k', 0, 0, 0, 2, b'h', b'i', 0, 0, 0, 4];
        let r = SignRequest::parse(&raw[1..]).unwrap();
        assert_eq!(
            r,
            SignRequest {
                key_blob: b"k",
                data: b"hi",
                flags: RSA_SHA2_512
            }
        );
        assert_eq!(SignRequest::parse(&raw[1..raw.len() - 1]), None);
        assert_eq!(frame(&[11]), [0, 0, 0, 1, 11]);
        assert_eq!(sign_response(b"s"), [14, 0, 0, 0, 1, b's']);
    }

    #[test]
    fn request_frames() {
        assert_eq!(request_len([0, 0, 0, 1], 8), Ok(1));
        assert_eq!(request_len([0, 0, 0, 0], 8), Err(FrameError::Empty));
        assert_eq!(request_len([0, 0, 0, 9], 8), Err(FrameError::TooLong(9, 8)));
        assert_eq!(take_request(&[0, 0, 0], 8), Ok(None));
        assert_eq!(take_request(&[0, 0, 0, 2, 11], 8), Ok(None));
        assert_eq!(
            take_request(&[0, 0, 0, 1, 11, 0], 8),
            Ok(Some((&[11][..], 5)))
        );
        assert_eq!(
            take_request(&[255, 255, 255, 255], 8)
                .unwrap_err()
                .to_string(),
            "an agent request of 4294967295 bytes (at most 8 are served)"
        );
    }
}
