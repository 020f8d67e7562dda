// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// Local stand-in for OpenGradient's TEERegistry, for tests and the demo stack only.
///
/// The read side mirrors the deployed registry: `getActiveTEEs(uint8)` returns `TEEInfo[]` with the
/// same field order and types (OpenGradient/og-evm contracts/solidity/TEERegistry.sol), extended by
/// the trailing `ohttpConfig` tuple that OpenGradient's OHTTP clients decode. Clients depend on that
/// layout, so it must not be reordered.
///
/// The write side is deliberately simpler: a local chain has no Nitro attestation precompile
/// (0x900), so the operator states the PCR hash instead of proving it, and a heartbeat is an owner
/// transaction rather than an RSA-PSS signature checked on chain.
contract TEERegistry {
    struct OHTTPConfig {
        uint8 keyId;
        uint16 kemId;
        uint16 kdfId;
        uint16 aeadId;
        bytes publicKey;
        bytes keyConfig;
        uint256 registeredAt;
    }

    struct TEEInfo {
        address owner;
        address paymentAddress;
        string endpoint;
        bytes publicKey;
        bytes tlsCertificate;
        bytes32 pcrHash;
        uint8 teeType;
        bool enabled;
        uint256 registeredAt;
        uint256 lastHeartbeatAt;
        OHTTPConfig ohttpConfig;
    }

    address public immutable admin;
    /// Same default as the deployed registry: an enclave silent for 30 minutes drops out of getActiveTEEs.
    uint256 public heartbeatMaxAge = 1800;

    mapping(bytes32 => TEEInfo) internal _tees;
    mapping(uint8 => bytes32[]) internal _teesByType;

    event TEERegistered(bytes32 indexed teeId, address indexed owner, uint8 teeType);
    event TEEDisabled(bytes32 indexed teeId);
    event TEEEnabled(bytes32 indexed teeId);
    event HeartbeatReceived(bytes32 indexed teeId, uint256 timestamp);

    error NotAdmin();
    error NotTEEOwner();
    error TEEAlreadyExists();
    error TEENotFound();
    error TEENotEnabled();
    error EmptyPublicKey();

    constructor() {
        admin = msg.sender;
    }

    modifier onlyOwnerOrAdmin(bytes32 teeId) {
        TEEInfo storage tee = _tees[teeId];
        if (tee.registeredAt == 0) revert TEENotFound();
        if (msg.sender != tee.owner && msg.sender != admin) revert NotTEEOwner();
        _;
    }

    /// The id is keccak256 of the signing key's DER SPKI bytes, exactly as the enclave reports `tee_id`.
    function registerTEE(
        bytes calldata signingPublicKey,
        bytes calldata tlsCertificate,
        address paymentAddress,
        string calldata endpoint,
        uint8 teeType,
        bytes32 pcrHash
    ) external returns (bytes32 teeId) {
        if (msg.sender != admin) revert NotAdmin();
        if (signingPublicKey.length == 0) revert EmptyPublicKey();
        teeId = keccak256(signingPublicKey);
        if (_tees[teeId].registeredAt != 0) revert TEEAlreadyExists();

        // Field by field: legacy codegen cannot copy a memory struct with a nested dynamic struct to storage.
        TEEInfo storage tee = _tees[teeId];
        tee.owner = msg.sender;
        tee.paymentAddress = paymentAddress;
        tee.endpoint = endpoint;
        tee.publicKey = signingPublicKey;
        tee.tlsCertificate = tlsCertificate;
        tee.pcrHash = pcrHash;
        tee.teeType = teeType;
        tee.enabled = true;
        tee.registeredAt = block.timestamp;
        tee.lastHeartbeatAt = block.timestamp;
        _teesByType[teeType].push(teeId);

        emit TEERegistered(teeId, msg.sender, teeType);
    }

    function setOHTTPConfig(
        bytes32 teeId,
        uint8 keyId,
        uint16 kemId,
        uint16 kdfId,
        uint16 aeadId,
        bytes calldata publicKey,
        bytes calldata keyConfig
    ) external onlyOwnerOrAdmin(teeId) {
        OHTTPConfig storage config = _tees[teeId].ohttpConfig;
        config.keyId = keyId;
        config.kemId = kemId;
        config.kdfId = kdfId;
        config.aeadId = aeadId;
        config.publicKey = publicKey;
        config.keyConfig = keyConfig;
        config.registeredAt = block.timestamp;
    }

    function disableTEE(bytes32 teeId) external onlyOwnerOrAdmin(teeId) {
        TEEInfo storage tee = _tees[teeId];
        if (!tee.enabled) revert TEENotEnabled();
        tee.enabled = false;
        emit TEEDisabled(teeId);
    }

    function enableTEE(bytes32 teeId) external onlyOwnerOrAdmin(teeId) {
        TEEInfo storage tee = _tees[teeId];
        if (tee.enabled) return;
        tee.enabled = true;
        emit TEEEnabled(teeId);
    }

    function heartbeat(bytes32 teeId) external onlyOwnerOrAdmin(teeId) {
        TEEInfo storage tee = _tees[teeId];
        if (!tee.enabled) revert TEENotEnabled();
        tee.lastHeartbeatAt = block.timestamp;
        emit HeartbeatReceived(teeId, block.timestamp);
    }

    function setHeartbeatMaxAge(uint256 maxAge) external {
        if (msg.sender != admin) revert NotAdmin();
        heartbeatMaxAge = maxAge;
    }

    function getTEE(bytes32 teeId) external view returns (TEEInfo memory) {
        if (_tees[teeId].registeredAt == 0) revert TEENotFound();
        return _tees[teeId];
    }

    /// Every TEE ever registered for the type, disabled ones included (for dashboards, not routing).
    function getTEEsByType(uint8 teeType) external view returns (bytes32[] memory) {
        return _teesByType[teeType];
    }

    function isTEEActive(bytes32 teeId) external view returns (bool) {
        return _isActive(_tees[teeId]);
    }

    /// Enabled TEEs with a fresh heartbeat, the set clients should route to.
    function getActiveTEEs(uint8 teeType) external view returns (TEEInfo[] memory result) {
        bytes32[] storage ids = _teesByType[teeType];
        uint256 count = 0;
        for (uint256 i = 0; i < ids.length; i++) {
            if (_isActive(_tees[ids[i]])) count++;
        }
        result = new TEEInfo[](count);
        uint256 j = 0;
        for (uint256 i = 0; i < ids.length; i++) {
            if (_isActive(_tees[ids[i]])) result[j++] = _tees[ids[i]];
        }
    }

    function _isActive(TEEInfo storage tee) private view returns (bool) {
        if (tee.registeredAt == 0 || !tee.enabled) return false;
        return block.timestamp - tee.lastHeartbeatAt <= heartbeatMaxAge;
    }
}
