//! MQTT 5 topic aliases, both directions (§3.3.2.3.4).

use std::collections::BTreeMap;

use bytestring::ByteString;

/// Why an inbound alias is refused; each maps to a DISCONNECT reason code.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// 0x94: alias 0 or above the Topic Alias Maximum we advertised.
    #[error("topic alias {0} is out of range")]
    OutOfRange(u16),
    /// 0x82: an empty topic with an alias that was never set.
    #[error("topic alias {0} was never set")]
    Unknown(u16),
}

/// Aliases the client set for topics it publishes to.
#[derive(Debug, Default)]
pub struct InboundAliases {
    maximum: u16,
    topics: BTreeMap<u16, ByteString>,
}

impl InboundAliases {
    /// `maximum` is the Topic Alias Maximum the server advertised in CONNACK.
    pub fn new(maximum: u16) -> Self {
        Self {
            maximum,
            topics: BTreeMap::new(),
        }
    }

    /// The maximum, when no alias is set: all that a resting connection keeps of it.
    pub fn at_rest(&self) -> Option<u16> {
        self.topics.is_empty().then_some(self.maximum)
    }

    /// The topic a PUBLISH is for: `topic` when non-empty (and the alias, if any, now
    /// names it), else the topic the alias was set to.
    pub fn resolve(&mut self, topic: &ByteString, alias: Option<u16>) -> Result<ByteString, AliasError> {
        let Some(alias) = alias else {
            return Ok(topic.clone());
        };
        if alias == 0 || alias > self.maximum {
            return Err(AliasError::OutOfRange(alias));
        }
        if topic.is_empty() {
            return self.topics.get(&alias).cloned().ok_or(AliasError::Unknown(alias));
        }
        self.topics.insert(alias, topic.clone());
        Ok(topic.clone())
    }
}

/// Aliases the server assigns for topics it sends, up to the client's Topic Alias Maximum.
/// Assigned first come, first served, never reassigned: cheap, and the topics a device
/// sees most are usually the ones it subscribed to first.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    maximum: u16,
    aliases: BTreeMap<String, u16>,
}

/// How to send a topic.
#[derive(Debug, PartialEq, Eq)]
pub enum OutboundTopic {
    /// Full topic, no alias.
    Plain,
    /// Full topic and a new alias for it.
    Assign(u16),
    /// Empty topic and the alias set earlier.
    Reuse(u16),
}

impl OutboundAliases {
    /// `maximum` is the Topic Alias Maximum the client sent in CONNECT (0 = none).
    pub fn new(maximum: u16) -> Self {
        Self {
            maximum,
            aliases: BTreeMap::new(),
        }
    }

    /// The maximum, when no alias is assigned: all that a resting connection keeps of it.
    pub fn at_rest(&self) -> Option<u16> {
        self.aliases.is_empty().then_some(self.maximum)
    }

    pub fn for_topic(&mut self, topic: &str) -> OutboundTopic {
        if let Some(&alias) = self.aliases.get(topic) {
            return OutboundTopic::Reuse(alias);
        }
        let next = self.aliases.len() + 1;
        match u16::try_from(next) {
            Ok(alias) if alias <= self.maximum => {
                self.aliases.insert(topic.to_owned(), alias);
                OutboundTopic::Assign(alias)
            }
            _ => OutboundTopic::Plain,
        }
    }

    /// Takes back the alias just assigned to `topic` when its PUBLISH could not be sent,
    /// so the client is never sent an alias it was not told about.
    pub fn forget(&mut self, topic: &str) {
        if self
            .aliases
            .get(topic)
            .is_some_and(|&alias| usize::from(alias) == self.aliases.len())
        {
            self.aliases.remove(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_alias_is_set_by_a_topic_and_used_by_an_empty_topic() {
        let mut a = InboundAliases::new(2);
        assert_eq!(a.resolve(&"a/b".into(), Some(1)), Ok("a/b".into()));
        assert_eq!(a.resolve(&"".into(), Some(1)), Ok("a/b".into()));
        assert_eq!(a.resolve(&"c".into(), Some(1)), Ok("c".into()));
        assert_eq!(a.resolve(&"".into(), Some(1)), Ok("c".into()));
        assert_eq!(a.resolve(&"x".into(), None), Ok("x".into()));
    }

    #[test]
    fn inbound_alias_errors() {
        let mut a = InboundAliases::new(2);
        assert_eq!(a.resolve(&"a".into(), Some(0)), Err(AliasError::OutOfRange(0)));
        assert_eq!(a.resolve(&"a".into(), Some(3)), Err(AliasError::OutOfRange(3)));
        assert_eq!(a.resolve(&"".into(), Some(2)), Err(AliasError::Unknown(2)));
        assert_eq!(
            InboundAliases::new(0).resolve(&"a".into(), Some(1)),
            Err(AliasError::OutOfRange(1))
        );
    }

    #[test]
    fn outbound_aliases_are_assigned_up_to_the_client_maximum_then_reused() {
        let mut a = OutboundAliases::new(2);
        assert_eq!(a.for_topic("t1"), OutboundTopic::Assign(1));
        assert_eq!(a.for_topic("t2"), OutboundTopic::Assign(2));
        assert_eq!(a.for_topic("t3"), OutboundTopic::Plain);
        assert_eq!(a.for_topic("t1"), OutboundTopic::Reuse(1));
        assert_eq!(OutboundAliases::new(0).for_topic("t1"), OutboundTopic::Plain);
    }

    #[test]
    fn only_the_latest_assignment_can_be_taken_back() {
        let mut a = OutboundAliases::new(3);
        assert_eq!(a.for_topic("t1"), OutboundTopic::Assign(1));
        assert_eq!(a.for_topic("t2"), OutboundTopic::Assign(2));
        a.forget("t1");
        assert_eq!(a.for_topic("t1"), OutboundTopic::Reuse(1));
        a.forget("t2");
        assert_eq!(a.for_topic("t3"), OutboundTopic::Assign(2));
    }
}
