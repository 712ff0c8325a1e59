// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {NodeRegistry} from "./NodeRegistry.sol";

/// @title AuditAnchor
/// @notice Registered institutions periodically anchor the head hash of their node's
///         hash-chained audit log, so rewriting history later is detectable: the
///         rewritten chain no longer reaches an anchored head.
contract AuditAnchor {
    /// @notice One anchored head.
    struct Anchor {
        bytes32 head;
        uint64 entries;
        uint64 anchoredAt;
    }

    NodeRegistry public immutable registry;
    mapping(address => Anchor[]) private anchors;

    event Anchored(address indexed institution, uint256 indexed index, bytes32 head, uint64 entries);

    /// @notice The caller is not a registered institution.
    error NotRegistered(address caller);
    /// @notice An audit log only grows: fewer entries than the last anchor is a rewrite.
    error EntriesDecreased(uint64 last, uint64 given);
    /// @notice The head hash is zero.
    error ZeroHead();

    constructor(NodeRegistry registry_) {
        registry = registry_;
    }

    /// @notice Anchors the caller's audit log head after `entries` entries.
    function anchor(bytes32 head, uint64 entries) external {
        if (!registry.isRegistered(msg.sender)) revert NotRegistered(msg.sender);
        if (head == bytes32(0)) revert ZeroHead();
        Anchor[] storage list = anchors[msg.sender];
        if (list.length > 0 && entries < list[list.length - 1].entries) {
            revert EntriesDecreased(list[list.length - 1].entries, entries);
        }
        list.push(Anchor(head, entries, uint64(block.timestamp)));
        emit Anchored(msg.sender, list.length - 1, head, entries);
    }

    /// @notice How many anchors `institution` has.
    function anchorCount(address institution) external view returns (uint256) {
        return anchors[institution].length;
    }

    /// @notice Anchor number `index` of `institution`.
    function anchorAt(address institution, uint256 index) external view returns (Anchor memory) {
        return anchors[institution][index];
    }
}
