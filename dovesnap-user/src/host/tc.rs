//! Legacy tc through rtnetlink: the "patch" that joins the two veth pairs of a
//! nat-fast `engine=tc` endpoint (docs/design/nat-fast-tc.md §2.1). A patch from `A` to
//! `B` is a `clsact` qdisc on `A` and one `u32` match-all filter on its ingress whose
//! `mirred` action sends every frame out of `B`, as
//! `tc filter add dev A ingress protocol all pref 1 u32 match u32 0 0 action mirred
//! egress redirect dev B` would.
//!
//! Plain netlink state: it lives as long as the devices, with or without the daemon,
//! which is what keeps such an endpoint working when dovesnap is gone.

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option,
    TcHandle, TcMessage, TcOption,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::netlink::{Netlink, NetlinkError};

/// The filter priority (`pref`) of the patch: the first, so nothing of ours or the
/// administrator's at a later priority runs before it.
pub const PATCH_PRIORITY: u16 = 1;

/// `ETH_P_ALL`: the patch takes every protocol.
const ETH_P_ALL: u16 = 0x0003;

impl Netlink {
    /// Patches `from` to `to`: a `clsact` qdisc on `from` (kept if there) and the
    /// redirect filter on its ingress. Adding it twice is refused by the kernel
    /// (`EEXIST`); [`Netlink::patch_targets`] says whether it is there.
    pub async fn patch(&self, from: &str, to: &str) -> Result<(), NetlinkError> {
        let missing = |name: &str| NetlinkError::Link {
            action: "patch",
            name: name.to_owned(),
            source: rtnetlink::Error::RequestFailed,
        };
        let from_index = self.index(from).await?.ok_or_else(|| missing(from))?;
        let to_index = self.index(to).await?.ok_or_else(|| missing(to))?;
        self.add_clsact(from, from_index).await?;
        let mut tc = self.handle().traffic_filter(from_index as i32);
        let request = (tc.add().ingress().priority(PATCH_PRIORITY))
            .protocol(ETH_P_ALL.to_be())
            .redirect(to_index)
            .map_err(|source| NetlinkError::Link {
                action: "build the tc redirect of",
                name: from.to_owned(),
                source,
            })?;
        request
            .execute()
            .await
            .map_err(|source| NetlinkError::Link {
                action: "add the tc redirect filter to",
                name: from.to_owned(),
                source,
            })
    }

    /// `tc qdisc replace dev NAME clsact`: idempotent.
    async fn add_clsact(&self, name: &str, index: u32) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle::INGRESS; // TC_H_CLSACT is TC_H_INGRESS
        msg.header.handle = TcHandle::from(0xffff_0000);
        msg.attributes.push(TcAttribute::Kind("clsact".to_owned()));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let fail = |source| NetlinkError::Link {
            action: "add a clsact qdisc to",
            name: name.to_owned(),
            source,
        };
        let mut response = self.handle().clone().request(req).map_err(fail)?;
        while let Some(message) = response.next().await {
            if let rtnetlink::packet_core::NetlinkPayload::Error(e) = message.payload {
                if e.code.is_some() {
                    return Err(fail(rtnetlink::Error::NetlinkError(e)));
                }
            }
        }
        Ok(())
    }

    /// `tc qdisc del dev NAME clsact`, which takes every tc filter of `name` with it;
    /// done already when `name` or its clsact qdisc is not there.
    pub async fn delete_patch(&self, name: &str) -> Result<(), NetlinkError> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        let mut request = self.handle().qdisc().del(index as i32);
        let msg = request.message_mut();
        msg.header.parent = TcHandle::INGRESS;
        msg.header.handle = TcHandle::from(0xffff_0000);
        msg.attributes.push(TcAttribute::Kind("clsact".to_owned()));
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(e.code.map(|c| -c.get()), Some(libc::ENOENT | libc::EINVAL)) =>
            {
                Ok(())
            }
            Err(source) => Err(NetlinkError::Link {
                action: "delete the clsact qdisc of",
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// The ifindexes the ingress filters of `name` redirect to with `mirred`, one per
    /// redirect action found (a sound patch gives exactly one); empty when `name` has
    /// no clsact qdisc or no such filter, `None` when `name` does not exist.
    pub async fn patch_targets(&self, name: &str) -> Result<Option<Vec<u32>>, NetlinkError> {
        let Some(index) = self.index(name).await? else {
            return Ok(None);
        };
        let mut tc = self.handle().traffic_filter(index as i32);
        let dump = tc.get().ingress().execute();
        let messages: Vec<TcMessage> = match dump.try_collect().await {
            Ok(m) => m,
            // No clsact (or ingress) qdisc: no filters.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| c.get()) == Some(-libc::EINVAL) =>
            {
                Vec::new()
            }
            Err(source) => {
                return Err(NetlinkError::Link {
                    action: "list the tc filters of",
                    name: name.to_owned(),
                    source,
                })
            }
        };
        Ok(Some(redirect_targets(&messages)))
    }
}

/// The `mirred` redirect targets in a filter dump.
fn redirect_targets(messages: &[TcMessage]) -> Vec<u32> {
    let mut targets = Vec::new();
    for msg in messages {
        for attr in &msg.attributes {
            let TcAttribute::Options(options) = attr else {
                continue;
            };
            for option in options {
                let TcOption::U32(TcFilterU32Option::Action(actions)) = option else {
                    continue;
                };
                for action in actions {
                    for a in &action.attributes {
                        let TcActionAttribute::Options(opts) = a else {
                            continue;
                        };
                        for o in opts {
                            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = o {
                                targets.push(p.ifindex);
                            }
                        }
                    }
                }
            }
        }
    }
    targets
}
