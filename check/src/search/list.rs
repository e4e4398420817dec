//! The time-ordered list of call and return events that drives the search.

/// Sentinel for "no node".
const NONE: u32 = u32::MAX;

/// Call and return events of every operation in a doubly linked list ordered by time, with
/// O(1) removal of an operation's two events and O(1) exact undo (dancing links).
pub(super) struct EventList {
    /// Links over nodes: 0 is the head sentinel, `len - 1` the tail sentinel.
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Operation of each node, and whether the node is its call (else its return).
    node_op: Vec<u32>,
    node_is_call: Vec<bool>,
    call_node: Vec<u32>,
    ret_node: Vec<u32>,
}

impl EventList {
    /// Builds the list from each operation's `(invoke, deadline)`.
    pub(super) fn new(intervals: impl ExactSizeIterator<Item = (u64, u64)>) -> Self {
        let n = intervals.len();
        // Ties put calls before returns: touching intervals are concurrent.
        let mut events: Vec<(u64, bool, u32)> = Vec::with_capacity(2 * n);
        for (i, (invoke, deadline)) in intervals.enumerate() {
            events.push((invoke, false, i as u32));
            events.push((deadline, true, i as u32));
        }
        events.sort_unstable();
        let nodes = events.len() + 2;
        let mut list = Self {
            next: (1..=nodes as u32).collect(),
            prev: (0..nodes as u32).map(|i| i.wrapping_sub(1)).collect(),
            node_op: vec![NONE; nodes],
            node_is_call: vec![false; nodes],
            call_node: vec![NONE; n],
            ret_node: vec![NONE; n],
        };
        for (k, &(_, is_return, op)) in events.iter().enumerate() {
            let node = k as u32 + 1;
            list.node_op[node as usize] = op;
            list.node_is_call[node as usize] = !is_return;
            let slot = match is_return {
                true => &mut list.ret_node,
                false => &mut list.call_node,
            };
            slot[op as usize] = node;
        }
        list
    }

    /// The first remaining event.
    pub(super) fn first(&self) -> u32 {
        self.next[0]
    }

    /// The event after `node`.
    pub(super) fn next(&self, node: u32) -> u32 {
        self.next[node as usize]
    }

    /// True if `node` is a call event (the tail sentinel is not).
    pub(super) fn is_call(&self, node: u32) -> bool {
        self.node_is_call[node as usize]
    }

    /// The operation of `node`.
    pub(super) fn op(&self, node: u32) -> u32 {
        self.node_op[node as usize]
    }

    /// The event after `op`'s call.
    pub(super) fn after_call(&self, op: u32) -> u32 {
        self.next(self.call_node[op as usize])
    }

    /// Operations whose call comes before every remaining return: those that may be ordered
    /// next.
    pub(super) fn candidates(&self) -> impl Iterator<Item = u32> + '_ {
        let mut node = self.first();
        std::iter::from_fn(move || {
            let op = self.is_call(node).then(|| self.op(node))?;
            node = self.next(node);
            Some(op)
        })
    }

    /// Removes both events of `op`.
    pub(super) fn lift(&mut self, op: u32) {
        self.unlink(self.call_node[op as usize]);
        self.unlink(self.ret_node[op as usize]);
    }

    /// Exact reverse of the latest `lift`, as dancing links require.
    pub(super) fn unlift(&mut self, op: u32) {
        self.relink(self.ret_node[op as usize]);
        self.relink(self.call_node[op as usize]);
    }

    fn unlink(&mut self, node: u32) {
        let (p, n) = (self.prev[node as usize], self.next[node as usize]);
        self.next[p as usize] = n;
        self.prev[n as usize] = p;
    }

    fn relink(&mut self, node: u32) {
        let (p, n) = (self.prev[node as usize], self.next[node as usize]);
        self.next[p as usize] = node;
        self.prev[n as usize] = node;
    }
}
