//! The few parts of DNS (RFC 1035, RFC 3596 for AAAA) the proxy needs: reading a query's one
//! question, and writing an answer with A/AAAA records (or an error code) for it.

use std::net::IpAddr;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const HEADER: usize = 12;
/// Answers for mesh names are short-lived: a Service's VIP rarely changes, but may.
pub const TTL: u32 = 30;

pub mod rcode {
    pub const NOERROR: u16 = 0;
    pub const FORMERR: u16 = 1;
    pub const SERVFAIL: u16 = 2;
}

/// A query's question.
#[derive(Debug, PartialEq, Eq)]
pub struct Question {
    /// Lower-case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question ends in the message (the answer copies everything before).
    end: usize,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a DNS header")]
    Short,
    #[error("not a standard query")]
    NotQuery,
    #[error("expected exactly one question")]
    QuestionCount,
    #[error("malformed question name")]
    BadName,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads the question of a standard query.
pub fn parse_query(msg: &[u8]) -> Result<Question, ParseError> {
    if msg.len() < HEADER {
        return Err(ParseError::Short);
    }
    let flags = u16_at(msg, 2).ok_or(ParseError::Short)?;
    // QR must be 0 (a query), opcode 0 (QUERY).
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 {
        return Err(ParseError::NotQuery);
    }
    if u16_at(msg, 4) != Some(1) {
        return Err(ParseError::QuestionCount);
    }
    let mut at = HEADER;
    let mut name = String::new();
    loop {
        let len = *msg.get(at).ok_or(ParseError::BadName)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        // No compression pointers in a question; labels are at most 63 bytes.
        if len > 63 || name.len() + len > 253 {
            return Err(ParseError::BadName);
        }
        let label = msg.get(at..at + len).ok_or(ParseError::BadName)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
        at += len;
    }
    let qtype = u16_at(msg, at).ok_or(ParseError::BadName)?;
    let qclass = u16_at(msg, at + 2).ok_or(ParseError::BadName)?;
    Ok(Question {
        name,
        qtype,
        qclass,
        end: at + 4,
    })
}

/// Whether `reply` answers `query`: a response (QR set) with the query's id and the same
/// question section, byte for byte (names compared without case).
pub fn answers(query: &[u8], reply: &[u8]) -> bool {
    let Ok(q) = parse_query(query) else {
        return false;
    };
    reply.len() >= q.end
        && reply[..2] == query[..2]
        && reply[2] & 0x80 != 0
        && u16_at(reply, 4) == Some(1)
        && reply[HEADER..q.end].eq_ignore_ascii_case(&query[HEADER..q.end])
}

/// The answer to `query` (whose question is `q`): `ips` of the asked family as records, or
/// no records (the name exists, not with that type).
pub fn answer(query: &[u8], q: &Question, ips: &[IpAddr]) -> Vec<u8> {
    let records: Vec<&IpAddr> = ips
        .iter()
        .filter(|ip| match q.qtype {
            TYPE_A => ip.is_ipv4(),
            TYPE_AAAA => ip.is_ipv6(),
            _ => false,
        })
        .filter(|_| q.qclass == CLASS_IN)
        .collect();
    let mut out = header(query, rcode::NOERROR, true, records.len() as u16);
    out.extend_from_slice(&query[HEADER..q.end]);
    for ip in records {
        out.extend_from_slice(&[0xc0, HEADER as u8]); // the name: a pointer to the question's
        let (rtype, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// An error answer (`rcode`) to `query`, echoing its question when it has one.
pub fn error(query: &[u8], q: Option<&Question>, rcode: u16) -> Vec<u8> {
    let mut out = header(query, rcode, false, 0);
    match q {
        Some(q) => out.extend_from_slice(&query[HEADER..q.end]),
        None => out[4..6].copy_from_slice(&0u16.to_be_bytes()),
    }
    out
}

/// A response header for `query`: same id, QR set, RD copied, RA set.
fn header(query: &[u8], rcode: u16, authoritative: bool, answers: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let id = query.get(..2).unwrap_or(&[0, 0]);
    out.extend_from_slice(id);
    let rd = u16_at(query, 2).unwrap_or(0) & 0x0100;
    let aa = if authoritative { 0x0400 } else { 0 };
    out.extend_from_slice(&(0x8000 | aa | rd | 0x0080 | rcode).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // the question, echoed
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional records
    out
}

/// A query for `name` (tests and the forwarding path's probes).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The addresses in an answer's A/AAAA records (tests, and anyone checking an answer).
pub fn answer_ips(msg: &[u8]) -> Result<(u16, Vec<IpAddr>), ParseError> {
    answer_records(msg)
        .map(|(rcode, records)| (rcode, records.into_iter().map(|(ip, _)| ip).collect()))
}

/// The A/AAAA records of an answer (class IN) with their TTLs in seconds, and its rcode. The
/// message is outside input (a forwarded upstream's answer): every offset is checked, record
/// names may be compression pointers (skipped, not followed), and a truncated record ends the
/// parse with an error rather than a guess.
pub fn answer_records(msg: &[u8]) -> Result<(u16, Vec<(IpAddr, u32)>), ParseError> {
    if msg.len() < HEADER {
        return Err(ParseError::Short);
    }
    let rcode = u16_at(msg, 2).ok_or(ParseError::Short)? & 0xf;
    let answers = u16_at(msg, 6).ok_or(ParseError::Short)?;
    // Skip the question.
    let mut at = HEADER;
    while *msg.get(at).ok_or(ParseError::BadName)? != 0 {
        at += 1 + msg[at] as usize;
    }
    at += 5;
    let mut ips = Vec::new();
    for _ in 0..answers {
        // Name: a pointer (2 bytes) or labels.
        if msg.get(at).ok_or(ParseError::BadName)? & 0xc0 == 0xc0 {
            at += 2;
        } else {
            while *msg.get(at).ok_or(ParseError::BadName)? != 0 {
                at += 1 + msg[at] as usize;
            }
            at += 1;
        }
        let rtype = u16_at(msg, at).ok_or(ParseError::BadName)?;
        let class = u16_at(msg, at + 2).ok_or(ParseError::BadName)?;
        let ttl = u32::from(u16_at(msg, at + 4).ok_or(ParseError::BadName)?) << 16
            | u32::from(u16_at(msg, at + 6).ok_or(ParseError::BadName)?);
        let len = u16_at(msg, at + 8).ok_or(ParseError::BadName)? as usize;
        let data = msg.get(at + 10..at + 10 + len).ok_or(ParseError::BadName)?;
        match (rtype, len) {
            _ if class != CLASS_IN => {}
            (TYPE_A, 4) => ips.push((
                IpAddr::from(<[u8; 4]>::try_from(data).expect("4 bytes")),
                ttl,
            )),
            (TYPE_AAAA, 16) => ips.push((
                IpAddr::from(<[u8; 16]>::try_from(data).expect("16 bytes")),
                ttl,
            )),
            _ => {}
        }
        at += 10 + len;
    }
    Ok((rcode, ips))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_question_with_its_records_and_echoes_id_and_question() {
        let q = query(0xbeef, "Cart.Shop.svc.cluster.local.", TYPE_A);
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.name, "cart.shop.svc.cluster.local");
        assert_eq!(parsed.qtype, TYPE_A);
        let ips: Vec<IpAddr> = vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()];
        let a = answer(&q, &parsed, &ips);
        assert_eq!(&a[..2], &[0xbe, 0xef]);
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!(
            answer_ips(&a).unwrap(),
            (rcode::NOERROR, vec!["10.96.0.10".parse().unwrap()])
        );
        let q6 = query(7, "cart.shop.svc.cluster.local", TYPE_AAAA);
        let a6 = answer(&q6, &parse_query(&q6).unwrap(), &ips);
        assert_eq!(
            answer_ips(&a6).unwrap().1,
            vec!["fd00::10".parse::<IpAddr>().unwrap()]
        );
        // Another type: the name exists, no records.
        let mx = query(8, "cart.shop.svc.cluster.local", 15);
        let a = answer(&mx, &parse_query(&mx).unwrap(), &ips);
        assert_eq!(answer_ips(&a).unwrap(), (rcode::NOERROR, vec![]));
        // TTLs come with the records.
        assert_eq!(
            answer_records(&a6).unwrap().1,
            vec![("fd00::10".parse::<IpAddr>().unwrap(), TTL)]
        );
    }

    #[test]
    fn forwarded_answers_are_read_defensively() {
        // A CNAME then an A record whose name is a compression pointer, TTL 0x01020304.
        let q = query(9, "www.example.com", TYPE_A);
        let mut a = q.clone();
        a[2] |= 0x80;
        a[7] = 2; // two answers
        a.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12]);
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 1, 2, 3, 4, 0, 4, 192, 0, 2, 7]);
        assert_eq!(
            answer_records(&a).unwrap(),
            (
                rcode::NOERROR,
                vec![("192.0.2.7".parse().unwrap(), 0x01020304)]
            )
        );
        // Cut anywhere inside the records: an error, never a panic or a partial guess.
        for cut in q.len()..a.len() {
            assert!(answer_records(&a[..cut]).is_err(), "cut at {cut}");
        }
        // More answers announced than present.
        let mut more = a.clone();
        more[7] = 200;
        assert!(answer_records(&more).is_err());
    }

    #[test]
    fn malformed_queries_are_refused_by_kind() {
        assert_eq!(parse_query(&[0; 5]), Err(ParseError::Short));
        let mut response = query(1, "a.b", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(ParseError::NotQuery));
        let mut two = query(1, "a.b", TYPE_A);
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(ParseError::QuestionCount));
        let mut long_label = query(1, "a.b", TYPE_A);
        long_label[12] = 64;
        assert_eq!(parse_query(&long_label), Err(ParseError::BadName));
        let cut = &query(1, "abc.def", TYPE_A)[..16];
        assert_eq!(parse_query(cut), Err(ParseError::BadName));
        let e = error(&two, None, rcode::FORMERR);
        assert_eq!(e.len(), 12, "a bare header");
        assert_eq!(u16::from_be_bytes([e[2], e[3]]) & 0xf, rcode::FORMERR);
        assert_eq!(&e[4..6], &[0, 0], "no question echoed");
    }
}
